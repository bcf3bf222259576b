#include "services/registry/proto_convert.h"

#include "services/registry/message_fields.h"

namespace moend::registry {

using fields::From;
using fields::To;

// The conversions whose fields message_fields.h lists in full.
#define MOEND_CONVERT(Domain, Wire)                                   \
  Wire ToProto(const Domain& v) { return To<Wire>(v); }              \
  Domain FromProto(const Wire& p) { return From<Domain>(p); }
MOEND_CONVERT(CompressionTuple, v1::CompressionTuple)
MOEND_CONVERT(SensitivityTable, v1::SensitivityTable)
MOEND_CONVERT(ModelShape, v1::ModelShape)
MOEND_CONVERT(ModelInfo, v1::Model)
MOEND_CONVERT(JobSpec, v1::JobSpec)
MOEND_CONVERT(Shard, v1::Shard)
MOEND_CONVERT(PartialTable, v1::PartialTable)
MOEND_CONVERT(ShardReport, v1::ReportShardRequest)
MOEND_CONVERT(ReportResult, v1::ReportShardResponse)
MOEND_CONVERT(VersionedTable, v1::GetTableResponse)
MOEND_CONVERT(VersionEvent, v1::ModelVersionEvent)
#undef MOEND_CONVERT

v1::CalibrationJob ToProto(const Job& j, bool include_shards) {
  v1::CalibrationJob p = To<v1::CalibrationJob>(j);
  p.set_shards_total(j.shards_total());
  p.set_shards_done(j.shards_done);
  if (include_shards) {
    for (const Shard& s : j.shards) fields::ToMessage(s, p.add_shards());
  }
  return p;
}
Job FromProto(const v1::CalibrationJob& p) {
  Job j = From<Job>(p);
  j.shards_done = p.shards_done();
  for (const v1::Shard& s : p.shards()) fields::FromMessage(s, &j.shards.emplace_back());
  return j;
}

v1::Lease ToProto(const Lease& l) {
  v1::Lease p = To<v1::Lease>(l);
  p.set_lease_duration_ms(absl::ToInt64Milliseconds(l.duration));
  return p;
}
Lease FromProto(const v1::Lease& p) {
  Lease l = From<Lease>(p);
  l.duration = absl::Milliseconds(p.lease_duration_ms());
  return l;
}

}  // namespace moend::registry

// Conversions between the registry's domain records (registry_types.h,
// core/sensitivity_table.h) and moend.v1 messages, for the gRPC adapter and
// the client (the database has records of its own, records.h). FromProto
// does not validate; the Registry does.
#ifndef MOEND_SERVICES_REGISTRY_PROTO_CONVERT_H_
#define MOEND_SERVICES_REGISTRY_PROTO_CONVERT_H_

#include "core/sensitivity_table.h"
#include "moend/v1/registry.pb.h"
#include "services/registry/registry_types.h"

namespace moend::registry {

v1::CompressionTuple ToProto(const CompressionTuple& t);
CompressionTuple FromProto(const v1::CompressionTuple& p);

v1::SensitivityTable ToProto(const SensitivityTable& t);
SensitivityTable FromProto(const v1::SensitivityTable& p);

v1::ModelShape ToProto(const ModelShape& s);
ModelShape FromProto(const v1::ModelShape& p);

v1::Model ToProto(const ModelInfo& m);
ModelInfo FromProto(const v1::Model& p);

v1::JobSpec ToProto(const JobSpec& s);
JobSpec FromProto(const v1::JobSpec& p);

v1::Shard ToProto(const Shard& s);
Shard FromProto(const v1::Shard& p);

// Shards are included only when `include_shards`.
v1::CalibrationJob ToProto(const Job& j, bool include_shards);
Job FromProto(const v1::CalibrationJob& p);

v1::Lease ToProto(const Lease& l);
Lease FromProto(const v1::Lease& p);

v1::PartialTable ToProto(const PartialTable& t);
PartialTable FromProto(const v1::PartialTable& p);

v1::ReportShardRequest ToProto(const ShardReport& r);
ShardReport FromProto(const v1::ReportShardRequest& p);

v1::ReportShardResponse ToProto(const ReportResult& r);
ReportResult FromProto(const v1::ReportShardResponse& p);

v1::GetTableResponse ToProto(const VersionedTable& t);
VersionedTable FromProto(const v1::GetTableResponse& p);

v1::ModelVersionEvent ToProto(const VersionEvent& e);
VersionEvent FromProto(const v1::ModelVersionEvent& p);

}  // namespace moend::registry

#endif  // MOEND_SERVICES_REGISTRY_PROTO_CONVERT_H_

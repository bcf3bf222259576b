#include "services/registry/records.h"

#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status_macros.h"
#include "moend/storage/v1/records.pb.h"
#include "services/registry/message_fields.h"

namespace moend::registry::records {
namespace {

namespace pb = ::moend::storage::v1;
using storage::Column;

template <typename Record>
absl::StatusOr<Record> Parse(const std::string& bytes, const std::string& key) {
  Record r;
  if (!r.ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat("stored record '", key, "' does not parse as a ",
                                            Record::descriptor()->name()));
  }
  return r;
}

template <typename Record, typename T>
std::string Encode(const T& value) {
  return fields::To<Record>(value).SerializeAsString();
}

template <typename T, typename Record>
absl::StatusOr<T> Decode(const std::string& bytes, const std::string& key) {
  MOEND_ASSIGN_OR_RETURN(Record r, Parse<Record>(bytes, key));
  return fields::From<T>(r);
}

std::string EncodeJobRecord(Job job, int64_t shards_total) {
  if (job.state != JobState::kDone) job.state = JobState::kPending;  // "not complete"
  pb::JobRecord r = fields::To<pb::JobRecord>(job);
  r.set_shards_total(shards_total);
  return r.SerializeAsString();
}

// Decoded with `decode`, encoded again with `encode`.
template <typename T>
absl::StatusOr<std::string> Recode(absl::StatusOr<T> (*decode)(const std::string&,
                                                               const std::string&),
                                   std::string (*encode)(const T&), const std::string& bytes,
                                   const std::string& where) {
  MOEND_ASSIGN_OR_RETURN(T value, decode(bytes, where));
  return encode(value);
}

absl::StatusOr<std::string> RecodeJob(const std::string& bytes, const std::string& where) {
  MOEND_ASSIGN_OR_RETURN(StoredJob j, DecodeJob(bytes, where));
  return EncodeJobRecord(j.job, j.shards_total);
}

// The format-1 bytes of the format-0 record `kv` of column `c`.
absl::StatusOr<std::string> Reencode(Column c, const storage::KeyValue& kv) {
  const std::string where = absl::StrCat(std::string(storage::ColumnName(c)), "/", kv.key);
  const std::string& v = kv.value;
  switch (c) {
    case Column::kModels: return Recode(&DecodeModel, &EncodeModel, v, where);
    case Column::kRuns: return Recode(&DecodeRun, &EncodeRun, v, where);
    case Column::kTables: return Recode(&DecodeTable, &EncodeTable, v, where);
    case Column::kFeed: return Recode(&DecodeEvent, &EncodeEvent, v, where);
    case Column::kJobs:
      if (absl::StartsWith(kv.key, kJobPrefix)) return RecodeJob(v, where);
      if (absl::StartsWith(kv.key, "shard/")) {
        return Recode(&DecodeShard, &EncodeShard, v, where);
      }
      if (absl::StartsWith(kv.key, "report/")) {
        return Recode(&DecodePartialTable, &EncodePartialTable, v, where);
      }
      break;
    case Column::kMeta:
      break;
  }
  return absl::DataLossError(
      absl::StrCat("stored record '", where, "' is of no kind the registry writes"));
}

constexpr Column kRecordColumns[] = {Column::kModels, Column::kRuns, Column::kTables,
                                     Column::kJobs, Column::kFeed};

std::string FormatRecordBytes() {
  pb::FormatRecord r;
  r.set_version(kFormatVersion);
  return r.SerializeAsString();
}

}  // namespace

std::string JobKey(const std::string& job_id) { return absl::StrCat(kJobPrefix, job_id); }
std::string ShardKey(const std::string& job_id, int64_t index) {
  return absl::StrFormat("shard/%s/%08d", job_id, index);
}
std::string ShardPrefix(const std::string& job_id) { return absl::StrCat("shard/", job_id, "/"); }
std::string ReportKey(const std::string& job_id, int64_t index) {
  return absl::StrFormat("report/%s/%08d", job_id, index);
}
std::string VersionKey(const std::string& model, uint64_t version) {
  return absl::StrFormat("%s/%020d", model, version);
}

std::string EncodeModel(const ModelInfo& model) { return Encode<pb::ModelRecord>(model); }
std::string EncodeJob(const Job& job) { return EncodeJobRecord(job, job.shards_total()); }
std::string EncodeShard(const Shard& shard) { return Encode<pb::ShardRecord>(shard); }
std::string EncodePartialTable(const PartialTable& table) {
  return Encode<pb::PartialTableRecord>(table);
}
std::string EncodeTable(const VersionedTable& table) { return Encode<pb::TableRecord>(table); }
std::string EncodeRun(const CalibrationRun& run) { return Encode<pb::RunRecord>(run); }
std::string EncodeEvent(const VersionEvent& event) { return Encode<pb::FeedRecord>(event); }

absl::StatusOr<ModelInfo> DecodeModel(const std::string& bytes, const std::string& key) {
  return Decode<ModelInfo, pb::ModelRecord>(bytes, key);
}
absl::StatusOr<StoredJob> DecodeJob(const std::string& bytes, const std::string& key) {
  MOEND_ASSIGN_OR_RETURN(pb::JobRecord r, Parse<pb::JobRecord>(bytes, key));
  StoredJob stored{fields::From<Job>(r), r.shards_total()};
  if (stored.job.state != JobState::kDone) stored.job.state = JobState::kPending;
  return stored;
}
absl::StatusOr<Shard> DecodeShard(const std::string& bytes, const std::string& key) {
  return Decode<Shard, pb::ShardRecord>(bytes, key);
}
absl::StatusOr<PartialTable> DecodePartialTable(const std::string& bytes, const std::string& key) {
  return Decode<PartialTable, pb::PartialTableRecord>(bytes, key);
}
absl::StatusOr<VersionedTable> DecodeTable(const std::string& bytes, const std::string& key) {
  return Decode<VersionedTable, pb::TableRecord>(bytes, key);
}
absl::StatusOr<CalibrationRun> DecodeRun(const std::string& bytes, const std::string& key) {
  return Decode<CalibrationRun, pb::RunRecord>(bytes, key);
}
absl::StatusOr<VersionEvent> DecodeEvent(const std::string& bytes, const std::string& key) {
  return Decode<VersionEvent, pb::FeedRecord>(bytes, key);
}

absl::StatusOr<uint32_t> ReadFormat(const storage::Store& store) {
  absl::StatusOr<std::string> bytes = store.Get(Column::kMeta, kFormatKey);
  if (absl::IsNotFound(bytes.status())) return 0u;
  if (!bytes.ok()) return bytes.status();
  MOEND_ASSIGN_OR_RETURN(pb::FormatRecord r,
                         Parse<pb::FormatRecord>(*bytes, absl::StrCat("meta/", kFormatKey)));
  return r.version();
}

absl::Status PrepareFormat(storage::Store& store) {
  MOEND_ASSIGN_OR_RETURN(uint32_t format, ReadFormat(store));
  if (format == kFormatVersion) return absl::OkStatus();
  if (format != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "registry database '", store.path(), "' is in record format ", format,
        "; this moend-registry reads formats 0 to ", kFormatVersion, " and writes ",
        kFormatVersion, ": run the moend-registry that wrote it (or a newer one), or restore a "
        "backup taken before the upgrade"));
  }
  bool empty = true;
  for (Column c : kRecordColumns) {
    MOEND_ASSIGN_OR_RETURN(std::vector<storage::KeyValue> kvs, store.Scan(c, ""));
    empty = empty && kvs.empty();
  }
  if (!empty) return MigrateFormat0(store);
  storage::WriteBatch batch;
  batch.Put(Column::kMeta, std::string(kFormatKey), FormatRecordBytes());
  return store.Write(batch);
}

absl::Status MigrateFormat0(storage::Store& store, size_t max_batch_bytes) {
  storage::WriteBatch batch;
  size_t batch_bytes = 0;
  for (Column c : kRecordColumns) {
    MOEND_ASSIGN_OR_RETURN(std::vector<storage::KeyValue> kvs, store.Scan(c, ""));
    for (const storage::KeyValue& kv : kvs) {
      MOEND_ASSIGN_OR_RETURN(std::string bytes, Reencode(c, kv));
      if (bytes == kv.value) continue;  // format 0 and 1 agree on this record
      batch_bytes += kv.key.size() + bytes.size();
      batch.Put(c, kv.key, std::move(bytes));
      if (batch_bytes >= max_batch_bytes) {
        MOEND_RETURN_IF_ERROR(store.Write(batch));
        batch = storage::WriteBatch();
        batch_bytes = 0;
      }
    }
  }
  batch.Put(Column::kMeta, std::string(kFormatKey), FormatRecordBytes());
  return store.Write(batch);
}

}  // namespace moend::registry::records

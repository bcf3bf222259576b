// The registry's database records: where each record lives, how it is
// encoded, and which format the database is in. The encoding is
// proto/moend/storage/v1/records.proto (not the RPC messages).
//
// Layout (column: key -> record), format 1:
//   models: <model name>                       -> ModelRecord
//   runs:   <run id>                           -> RunRecord
//   tables: <model>/<version, 20 digits>       -> TableRecord (never rewritten)
//   feed:   <model>/<version, 20 digits>       -> FeedRecord
//   jobs:   job/<job id>                       -> JobRecord (at submit and completion)
//           shard/<job id>/<index, 8 digits>   -> ShardRecord
//           report/<job id>/<index, 8 digits>  -> PartialTableRecord (done shards)
//   meta:   format                             -> FormatRecord {version: 1}
// Model names and job ids are [A-Za-z0-9._-], so no key part holds a '/'.
//
// Format 0 (moend-registry up to commit 24ea92c) had the same keys with
// moend.v1 messages as values and no meta/format key; job records also
// carried shards_done and state RUNNING, rewritten by every report.
#ifndef MOEND_SERVICES_REGISTRY_RECORDS_H_
#define MOEND_SERVICES_REGISTRY_RECORDS_H_

#include <cstdint>
#include <string>


#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/sensitivity_table.h"
#include "services/registry/registry_types.h"
#include "storage/store.h"

namespace moend::registry::records {

// The format this code writes.
inline constexpr uint32_t kFormatVersion = 1;

inline constexpr char kJobPrefix[] = "job/";
inline constexpr char kFormatKey[] = "format";
std::string JobKey(const std::string& job_id);
std::string ShardKey(const std::string& job_id, int64_t index);
std::string ShardPrefix(const std::string& job_id);  // of every ShardKey of the job
std::string ReportKey(const std::string& job_id, int64_t index);
std::string VersionKey(const std::string& model, uint64_t version);  // tables and feed

std::string EncodeModel(const ModelInfo& model);
// The job without its shards (they are records of their own); state is
// stored as done or not done.
std::string EncodeJob(const Job& job);
std::string EncodeShard(const Shard& shard);
std::string EncodePartialTable(const PartialTable& table);
std::string EncodeTable(const VersionedTable& table);
std::string EncodeRun(const CalibrationRun& run);
std::string EncodeEvent(const VersionEvent& event);

// DataLoss naming `key` when the bytes do not parse.
absl::StatusOr<ModelInfo> DecodeModel(const std::string& bytes, const std::string& key);
struct StoredJob {
  Job job;  // state kDone or kPending; no shards, shards_done 0
  int64_t shards_total = 0;
};
absl::StatusOr<StoredJob> DecodeJob(const std::string& bytes, const std::string& key);
absl::StatusOr<Shard> DecodeShard(const std::string& bytes, const std::string& key);
absl::StatusOr<PartialTable> DecodePartialTable(const std::string& bytes, const std::string& key);
absl::StatusOr<VersionedTable> DecodeTable(const std::string& bytes, const std::string& key);
absl::StatusOr<CalibrationRun> DecodeRun(const std::string& bytes, const std::string& key);
absl::StatusOr<VersionEvent> DecodeEvent(const std::string& bytes, const std::string& key);

// The format stored in meta/format; 0 when there is none. DataLoss when the
// record does not parse.
absl::StatusOr<uint32_t> ReadFormat(const storage::Store& store);

// Makes `store` a database of kFormatVersion, before anything reads it:
// - a database without records is stamped with kFormatVersion;
// - a format-0 database (records, no meta/format) is migrated
//   (MigrateFormat0);
// - kFormatVersion is left as it is;
// - any other version is FailedPrecondition naming the database, its format
//   and the formats this build reads; nothing is written.
absl::Status PrepareFormat(storage::Store& store);

// Rewrites every record of a format-0 database in format 1, in synced
// batches of about `max_batch_bytes`, and stamps meta/format in the last
// one. Format-0 bytes decode as format-1 records, so a migration cut short
// (crash, full disk) leaves a database that still opens as format 0 and is
// migrated again on the next open. DataLoss for a record that does not parse
// or a key of no known kind; the store's error for a failed write.
absl::Status MigrateFormat0(storage::Store& store, size_t max_batch_bytes = size_t{16} << 20);

}  // namespace moend::registry::records

#endif  // MOEND_SERVICES_REGISTRY_RECORDS_H_

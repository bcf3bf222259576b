// The registry's domain logic, independent of gRPC: models, calibration jobs
// split into shards (sample range x layer range), shard leases with expiry,
// idempotent shard reports, the merge into one sensitivity table when every
// shard is in, and the change feed of model versions.
//
// Every mutation is one synced atomic write to the Store before it is
// acknowledged; in-memory state is changed only after the write succeeded, so
// a rejected or failed call leaves nothing behind. Thread-safe, and writes do
// not hold the registry's mutex: a call stages its change under the mutex,
// reserves what it changes (a shard, a model's next version, a model name or
// job id), writes with the mutex released, and applies or drops the change
// under the mutex again. Concurrent calls on different shards therefore reach
// the store together and share one WAL sync (group commit); a call on a
// reserved shard or version waits until that write is done. Reads take the
// mutex shared. The database's records are those of records.h.
#ifndef MOEND_SERVICES_REGISTRY_REGISTRY_H_
#define MOEND_SERVICES_REGISTRY_REGISTRY_H_

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/sensitivity_table.h"
#include "services/registry/clock.h"
#include "services/registry/registry_types.h"
#include "services/registry/shard_index.h"
#include "storage/store.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace moend::registry {

struct RegistryOptions {
  // How long a lease lasts without a heartbeat. Default 60 s.
  absl::Duration lease_duration = absl::Seconds(60);
  // Time source for leases; null = the wall clock. Not owned.
  Clock* clock = nullptr;
  // Where metrics are registered; null = no metrics. Not owned; must outlive
  // the Registry. Exposes moend_registry_reports_total{result},
  // moend_registry_jobs{state}, moend_registry_write_seconds,
  // moend_registry_leases_total{kind="new|reassigned"}.
  prometheus::Registry* metrics = nullptr;
  // Most shards one job may have. Default 100000.
  int64_t max_shards_per_job = 100000;
};

class Registry {
 public:
  // Loads every model, job, shard and feed entry from `store`, after making
  // it a database of the current record format (records::PrepareFormat: a
  // new one is stamped, a format-0 one migrated; FailedPrecondition for a
  // newer format, nothing changed). `store` must be thread-safe.
  static absl::StatusOr<std::unique_ptr<Registry>> Open(std::unique_ptr<storage::Store> store,
                                                        RegistryOptions options);
  ~Registry();

  // Registers `name` with the shape read from config.json. Registering the
  // same name with the same shape again returns the existing model;
  // a different shape is AlreadyExists. Names: [A-Za-z0-9._-], 1..128.
  absl::StatusOr<ModelInfo> RegisterModel(const std::string& name, const std::string& config_json);
  absl::StatusOr<ModelInfo> GetModel(const std::string& name) const;
  std::vector<ModelInfo> ListModels() const;

  // Validates and stores a job split into shards; returns it with defaults
  // filled in. A job_id that exists with the same spec returns the existing
  // job (idempotent submit); with another spec, AlreadyExists.
  absl::StatusOr<Job> SubmitJob(JobSpec spec);
  absl::StatusOr<Job> GetJob(const std::string& job_id) const;
  // Jobs of `model` ("" = all), oldest first.
  std::vector<Job> ListJobs(const std::string& model) const;

  // Leases the first available shard (never leased, or lease lapsed) of the
  // oldest unfinished job, optionally only of `job_id` / `model`. nullopt when
  // nothing is available now.
  absl::StatusOr<std::optional<Lease>> LeaseShard(const std::string& worker_id,
                                                  const std::string& job_id = "",
                                                  const std::string& model = "");
  // Extends a live lease; returns the new expiry. FailedPrecondition when the
  // shard is already done or the lease was superseded (stop working on it).
  absl::StatusOr<absl::Time> Heartbeat(const std::string& lease_id, const std::string& worker_id);

  // Stores a shard's partial table. Rejected, with nothing stored: unknown job
  // (NotFound), wrong model, shard or table shape, NaN/negative values
  // (InvalidArgument), a lease never issued for this shard (FailedPrecondition).
  // A report for a shard already done is OK with duplicate = true and changes
  // nothing. The report that completes the job merges all partial tables,
  // bumps the model version and publishes it on the change feed, in the same
  // atomic write.
  absl::StatusOr<ReportResult> ReportShard(const ShardReport& report);

  // Stores a whole table computed elsewhere as the model's next version.
  absl::StatusOr<uint64_t> PublishTable(const SensitivityTable& table);
  // version 0 = latest. NotFound when the model or version has no table.
  absl::StatusOr<VersionedTable> GetTable(const std::string& model, uint64_t version) const;

  // Change-feed events with version > after[model] (missing = after_version),
  // for `model` ("" = every model), in (model, version) order.
  std::vector<VersionEvent> EventsAfter(const std::string& model, uint64_t after_version,
                                        const std::map<std::string, uint64_t>& after = {}) const;
  // Like EventsAfter, but waits until there is at least one event, `deadline`
  // passes (returns empty) or Shutdown() (Cancelled).
  absl::StatusOr<std::vector<VersionEvent>> WaitForEvents(
      const std::string& model, uint64_t after_version,
      const std::map<std::string, uint64_t>& after, absl::Time deadline) const;

  // Wakes every waiter; later waits return Cancelled. Idempotent.
  void Shutdown();

 private:
  struct Metrics;
  struct ModelEntry {
    ModelInfo info;
    bool version_in_flight = false;  // a batch adding its next version is being written
  };
  struct JobEntry {
    Job job;
    std::vector<char> busy;           // [shard] a write of this shard is in flight
    int64_t reports_in_flight = 0;    // report batches of this job being written
  };

  Registry(std::unique_ptr<storage::Store> store, RegistryOptions options);
  absl::Status Load();
  // Builds and writes one batch with mu_ released (held on entry and on
  // return). The caller has reserved whatever the batch changes.
  absl::Status WriteUnlocked(absl::FunctionRef<absl::Status(storage::WriteBatch*)> build)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Write(const storage::WriteBatch& batch);
  void SetJobState(JobEntry& entry, JobState state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Puts a shard back in the lease index as its state says.
  void IndexShard(const JobEntry& entry, const Shard& shard) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnindexShard(const JobEntry& entry, const Shard& shard) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Job> NormalizeJob(JobSpec spec) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // `values` is what CheckValues said of the report's numbers; it is
  // returned only when every check against the job passes.
  absl::Status ValidateReport(const Job& job, const ShardReport& report,
                              const absl::Status& values) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Adds the records of a new version of `model` (table, model, run, feed)
  // to `batch` and updates `model`. Needs no lock: the caller holds the
  // model's version reservation.
  VersionEvent AddVersion(const SensitivityTable& table, const std::string& run_id,
                          int64_t shards, storage::WriteBatch* batch, ModelInfo* model) const;
  void ApplyVersion(const ModelInfo& model, const VersionEvent& event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<VersionEvent> EventsAfterLocked(const std::string& model, uint64_t after_version,
                                              const std::map<std::string, uint64_t>& after) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const RegistryOptions options_;
  Clock* const clock_;
  std::unique_ptr<Metrics> metrics_;
  const std::unique_ptr<storage::Store> store_;  // thread-safe; used without mu_

  mutable absl::Mutex mu_;
  std::map<std::string, ModelEntry> models_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> registering_ ABSL_GUARDED_BY(mu_);  // model names being written
  // Entries are never erased, so references to them stay valid while mu_ is
  // released for a write.
  std::map<std::string, JobEntry> jobs_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> submitting_ ABSL_GUARDED_BY(mu_);   // job ids being written
  std::map<int64_t, std::string> job_order_ ABSL_GUARDED_BY(mu_);  // sequence -> job id
  ShardIndex leasable_ ABSL_GUARDED_BY(mu_);
  int64_t job_counts_[3] ABSL_GUARDED_BY(mu_) = {0, 0, 0};  // by JobState
  std::map<std::pair<std::string, uint64_t>, VersionEvent> feed_ ABSL_GUARDED_BY(mu_);
  uint64_t feed_changes_ ABSL_GUARDED_BY(mu_) = 0;  // bumped by each new event
  int64_t next_job_number_ ABSL_GUARDED_BY(mu_) = 1;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace moend::registry

#endif  // MOEND_SERVICES_REGISTRY_REGISTRY_H_

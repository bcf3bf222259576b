// The registry's domain logic, independent of gRPC: models, calibration jobs
// split into shards (sample range x layer range), shard leases with expiry,
// idempotent shard reports, the merge into one sensitivity table when every
// shard is in, and the change feed of model versions.
//
// Every mutation is one synced atomic write to the Store before it is
// acknowledged; in-memory state is changed only after the write succeeded, so
// a rejected or failed call leaves nothing behind. Thread-safe.
#ifndef MOEND_SERVICES_REGISTRY_REGISTRY_H_
#define MOEND_SERVICES_REGISTRY_REGISTRY_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/sensitivity_table.h"
#include "services/registry/clock.h"
#include "services/registry/registry_types.h"
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
  // Loads every model, job, shard and feed entry from `store`.
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
  Registry(std::unique_ptr<storage::Store> store, RegistryOptions options);
  absl::Status Load();
  absl::Status Write(const storage::WriteBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateJobGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Job> NormalizeJob(JobSpec spec) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ValidateReport(const Job& job, const ShardReport& report) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds "new version of model" records (table, model, run, feed) to `batch`.
  absl::StatusOr<VersionEvent> AddVersion(const SensitivityTable& table, const std::string& run_id,
                                          int64_t shards, storage::WriteBatch* batch,
                                          ModelInfo* model) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<VersionEvent> EventsAfterLocked(const std::string& model, uint64_t after_version,
                                              const std::map<std::string, uint64_t>& after) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const RegistryOptions options_;
  Clock* const clock_;
  std::unique_ptr<Metrics> metrics_;

  mutable absl::Mutex mu_;
  mutable absl::CondVar feed_changed_;
  std::unique_ptr<storage::Store> store_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, ModelInfo> models_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Job> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> job_order_ ABSL_GUARDED_BY(mu_);  // submission order
  std::map<std::pair<std::string, uint64_t>, VersionEvent> feed_ ABSL_GUARDED_BY(mu_);
  int64_t next_job_number_ ABSL_GUARDED_BY(mu_) = 1;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace moend::registry

#endif  // MOEND_SERVICES_REGISTRY_REGISTRY_H_

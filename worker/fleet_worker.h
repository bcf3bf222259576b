// A calibration worker of the fleet: leases shards from the registry, runs the
// calibrator on them, heartbeats while it works and reports the partial
// tables. Survives registry restarts (retries with backoff).
#ifndef MOEND_WORKER_FLEET_WORKER_H_
#define MOEND_WORKER_FLEET_WORKER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "runtime/model.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "services/registry/registry_client.h"

namespace moend::worker {

struct FleetWorkerOptions {
  std::string worker_id;        // required; unique per process
  std::string models_dir = "models";  // model folders by registered name
  // Datasets named by a job are read relative to this folder unless absolute.
  std::string data_dir = ".";
  absl::Duration idle_poll = absl::Milliseconds(200);  // wait when no shard is free
  absl::Duration max_backoff = absl::Seconds(2);        // registry unreachable
  int threads = 0;              // forward/calibration threads; 0 = all cores
  bool exit_when_idle = false;  // return after the first empty lease poll
};

class FleetWorker {
 public:
  // `metrics` may be null.
  FleetWorker(FleetWorkerOptions options, registry::RegistryClient* client,
              prometheus::Registry* metrics);

  // Works until Stop() (or, with exit_when_idle, until no shard is free).
  absl::Status Run();
  void Stop() { stop_ = true; }

  // Computes and reports one leased shard. Public for tests.
  absl::Status ProcessLease(const registry::Lease& lease);

 private:
  absl::StatusOr<const Model*> ModelFor(const registry::Lease& lease);

  FleetWorkerOptions options_;
  registry::RegistryClient* client_;
  std::atomic<bool> stop_{false};
  std::map<std::string, std::unique_ptr<Model>> models_;
  prometheus::Counter* sequences_ = nullptr;
  prometheus::Histogram* sequence_seconds_ = nullptr;
  prometheus::Counter* shards_reported_ = nullptr;
  prometheus::Counter* shards_failed_ = nullptr;
  prometheus::Counter* shards_lost_ = nullptr;
};

}  // namespace moend::worker

#endif  // MOEND_WORKER_FLEET_WORKER_H_

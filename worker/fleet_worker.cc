#include "worker/fleet_worker.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "kernels/backend.h"
#include "worker/calibrator.h"

namespace moend::worker {
namespace {

void Log(const std::string& id, const std::string& msg) {
  std::fprintf(stderr, "moend-worker %s: %s\n", id.c_str(), msg.c_str());
}

bool Retryable(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) || absl::IsAborted(s) ||
         absl::IsResourceExhausted(s);
}

}  // namespace

FleetWorker::FleetWorker(FleetWorkerOptions options, registry::RegistryClient* client,
                         prometheus::Registry* metrics)
    : options_(std::move(options)), client_(client) {
  if (metrics == nullptr) return;
  const std::string device = kernels::CudaDeviceAvailable() ? "cuda" : "cpu";
  sequences_ = &prometheus::BuildCounter()
                    .Name("moend_worker_sequences_total")
                    .Help("Calibration sequences processed (one forward + all layers of a shard)")
                    .Register(*metrics)
                    .Add({{"device", device}});
  sequence_seconds_ = &prometheus::BuildHistogram()
                           .Name("moend_worker_sequence_seconds")
                           .Help("Wall time per calibration sequence")
                           .Register(*metrics)
                           .Add({{"device", device}},
                                prometheus::Histogram::BucketBoundaries{
                                    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60});
  auto& shards = prometheus::BuildCounter()
                     .Name("moend_worker_shards_total")
                     .Help("Shards by outcome: reported, failed, lost (lease expired)")
                     .Register(*metrics);
  shards_reported_ = &shards.Add({{"result", "reported"}});
  shards_failed_ = &shards.Add({{"result", "failed"}});
  shards_lost_ = &shards.Add({{"result", "lost"}});
}

absl::StatusOr<const Model*> FleetWorker::ModelFor(const registry::Lease& lease) {
  const std::string& name = lease.spec.model;
  auto it = models_.find(name);
  if (it == models_.end()) {
    const std::string dir = (std::filesystem::path(options_.models_dir) / name).string();
    MOEND_ASSIGN_OR_RETURN(std::unique_ptr<Model> model,
                           Model::Load(dir, ModelOptions{options_.threads}));
    it = models_.emplace(name, std::move(model)).first;
  }
  const ModelConfig& c = it->second->config();
  const registry::ModelShape& shape = lease.shape;
  if (c.num_layers != shape.num_layers || c.num_kv_heads != shape.num_kv_heads ||
      c.head_dim != shape.head_dim || c.num_heads != shape.num_attention_heads) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model folder for ", name, " (", c.num_layers, " layers, ", c.num_heads, "/",
        c.num_kv_heads, " heads of ", c.head_dim, ") does not match the registered shape (",
        shape.num_layers, " layers, ", shape.num_attention_heads, "/", shape.num_kv_heads,
        " heads of ", shape.head_dim, ")"));
  }
  return it->second.get();
}

absl::Status FleetWorker::ProcessLease(const registry::Lease& lease) {
  const registry::Shard& shard = lease.shard;
  MOEND_ASSIGN_OR_RETURN(const Model* model, ModelFor(lease));
  std::filesystem::path data(lease.spec.dataset);
  if (data.is_relative()) data = std::filesystem::path(options_.data_dir) / data;
  MOEND_ASSIGN_OR_RETURN(auto sequences,
                         LoadCalibrationSequences(data.string(), lease.spec.seq_len,
                                                  shard.sample_begin, shard.sample_end,
                                                  model->config().vocab_size));
  CalibrationOptions options;
  options.tuples = lease.spec.tuples;
  options.probe_tokens = lease.spec.seq_len - lease.spec.compression_point;

  // Heartbeats on a side thread at a third of the lease; a lost lease stops
  // the report (the shard already went to someone else).
  std::atomic<bool> done{false}, lost{false};
  std::thread heartbeat([&] {
    const absl::Duration every = std::max(lease.duration / 3, absl::Milliseconds(50));
    absl::Time next = absl::Now() + every;
    while (!done) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (absl::Now() < next) continue;
      next = absl::Now() + every;
      absl::StatusOr<absl::Time> r = client_->Heartbeat(lease.lease_id, options_.worker_id);
      if (!r.ok() && absl::IsFailedPrecondition(r.status())) lost = true;
    }
  });
  auto last = std::chrono::steady_clock::now();
  std::vector<std::vector<std::vector<double>>> s_head;
  auto s = CalibrateLayers(*model, sequences, shard.layer_begin, shard.layer_end, options,
                           [&](int64_t, int64_t) {
                             const auto now = std::chrono::steady_clock::now();
                             if (sequences_) sequences_->Increment();
                             if (sequence_seconds_) {
                               sequence_seconds_->Observe(
                                   std::chrono::duration<double>(now - last).count());
                             }
                             last = now;
                           },
                           &s_head);
  done = true;
  heartbeat.join();
  MOEND_RETURN_IF_ERROR(s.status());
  if (lost) {
    if (shards_lost_) shards_lost_->Increment();
    return absl::AbortedError(absl::StrCat("lease ", lease.lease_id, " was lost; not reporting"));
  }
  // Reports are idempotent: retry through registry restarts.
  absl::Duration backoff = absl::Milliseconds(50);
  while (true) {
    absl::StatusOr<registry::ReportResult> r = client_->ReportLease(lease, *s, s_head);
    if (r.ok()) {
      if (shards_reported_) shards_reported_->Increment();
      Log(options_.worker_id,
          absl::StrCat("reported shard ", shard.index, " of ", lease.job_id, " (",
                       r->shards_done, "/", r->shards_total, " done", r->duplicate ? ", duplicate" : "",
                       ")"));
      return absl::OkStatus();
    }
    if (!Retryable(r.status()) || stop_) return r.status();
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(backoff));
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

absl::Status FleetWorker::Run() {
  absl::Duration backoff = absl::Milliseconds(50);
  while (!stop_) {
    absl::StatusOr<std::optional<registry::Lease>> lease = client_->LeaseShard(options_.worker_id);
    if (!lease.ok()) {
      if (!Retryable(lease.status())) return lease.status();
      Log(options_.worker_id, absl::StrCat("registry unreachable, retrying: ",
                                           lease.status().message()));
      std::this_thread::sleep_for(absl::ToChronoMilliseconds(backoff));
      backoff = std::min(backoff * 2, options_.max_backoff);
      continue;
    }
    backoff = absl::Milliseconds(50);
    if (!lease->has_value()) {
      if (options_.exit_when_idle) return absl::OkStatus();
      std::this_thread::sleep_for(absl::ToChronoMilliseconds(options_.idle_poll));
      continue;
    }
    absl::Status s = ProcessLease(**lease);
    if (!s.ok()) {
      if (shards_failed_ && !absl::IsAborted(s)) shards_failed_->Increment();
      // The lease lapses and the shard goes to another worker (or back to us).
      Log(options_.worker_id, absl::StrCat("shard ", (*lease)->shard.index, " of ",
                                           (*lease)->job_id, " failed: ", s.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace moend::worker

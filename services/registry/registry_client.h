// A C++ client of the registry for workers, routers and moendctl. Every
// call but WaitForVersion is one blocking RPC with a deadline and returns the
// registry's status unchanged (codes and messages), or Unavailable /
// DeadlineExceeded from the network.
//
// A worker's loop:
//
//   MOEND_ASSIGN_OR_RETURN(auto client, RegistryClient::Connect({.target = "host:7001"}));
//   while (true) {
//     MOEND_ASSIGN_OR_RETURN(std::optional<Lease> lease, client->LeaseShard("worker-1"));
//     if (!lease) { sleep a little; continue; }
//     // compute s[layer][tuple] for layers [lease->shard.layer_begin, layer_end)
//     // averaged over samples [sample_begin, sample_end) of lease->spec.dataset,
//     // with lease->spec.tuples, seq_len, compression_point; call
//     // client->Heartbeat(lease->lease_id, "worker-1") well within
//     // lease->duration (a FailedPrecondition means: drop this shard).
//     MOEND_ASSIGN_OR_RETURN(ReportResult r, client->ReportLease(*lease, rows));
//   }
//
// Thread-safe: one client may be shared by threads. Every call but
// WaitForVersion is one blocking RPC.
#ifndef MOEND_SERVICES_REGISTRY_REGISTRY_CLIENT_H_
#define MOEND_SERVICES_REGISTRY_REGISTRY_CLIENT_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/sensitivity_table.h"
#include "services/common/security.h"
#include "services/registry/registry_types.h"

namespace moend::registry {

struct RegistryClientOptions {
  // gRPC target of the registry, e.g. "127.0.0.1:7001". Required.
  std::string target;
  // Deadline of one RPC. Default 30 s.
  absl::Duration rpc_timeout = absl::Seconds(30);
  // Connect waits this long for the channel to be ready; zero = do not wait
  // (the first call connects). Default 5 s.
  absl::Duration connect_timeout = absl::Seconds(5);
  // How often WaitForJob polls. Default 200 ms.
  absl::Duration poll_interval = absl::Milliseconds(200);
  // WaitForVersion's change-feed streams: after a stream fails it is opened
  // again after watch_backoff_initial, doubling up to watch_backoff_max.
  // Defaults 100 ms and 5 s.
  absl::Duration watch_backoff_initial = absl::Milliseconds(100);
  absl::Duration watch_backoff_max = absl::Seconds(5);
  // A stream is ended and opened again (from the last version seen) after
  // this long, so that a connection that died silently (no reset, no
  // keepalive) is replaced in bounded time. Default 60 s.
  absl::Duration watch_stream_lifetime = absl::Seconds(60);
  // TLS and the bearer token for the registry. Default: plaintext, no token.
  rpc::ClientSecurity security;
};

class RegistryClient {
 public:
  // Unavailable when connect_timeout > 0 and the registry cannot be reached
  // (or refuses the TLS handshake); the error of rpc::CreateChannel for
  // bad security options.
  static absl::StatusOr<std::unique_ptr<RegistryClient>> Connect(
      const RegistryClientOptions& options);
  ~RegistryClient();

  // Models. RegisterModelFromFile reads config.json at `config_path`.
  absl::StatusOr<ModelInfo> RegisterModel(const std::string& name, const std::string& config_json);
  absl::StatusOr<ModelInfo> RegisterModelFromFile(const std::string& name,
                                                  const std::string& config_path);
  absl::StatusOr<ModelInfo> GetModel(const std::string& name);
  absl::StatusOr<std::vector<ModelInfo>> ListModels();

  // Jobs. SubmitJob returns the job with defaults filled in and without
  // shards; GetJob includes the shards when asked.
  absl::StatusOr<Job> SubmitJob(const JobSpec& spec);
  absl::StatusOr<Job> GetJob(const std::string& job_id, bool include_shards = false);
  absl::StatusOr<std::vector<Job>> ListJobs(const std::string& model = "");
  // Polls until the job is done; DeadlineExceeded (with progress) after `timeout`.
  absl::StatusOr<Job> WaitForJob(const std::string& job_id, absl::Duration timeout);

  // Worker side. nullopt = no shard available right now (try again later).
  absl::StatusOr<std::optional<Lease>> LeaseShard(const std::string& worker_id,
                                                  const std::string& job_id = "",
                                                  const std::string& model = "");
  // New expiry; FailedPrecondition = the lease is gone, stop work on it.
  absl::StatusOr<absl::Time> Heartbeat(const std::string& lease_id, const std::string& worker_id);
  absl::StatusOr<ReportResult> ReportShard(const ShardReport& report);
  // Reports `s` ([shard layers][job tuples]) for `lease`: fills the lease,
  // job, model, shard, layer range, samples and tuples from the lease.
  absl::StatusOr<ReportResult> ReportLease(const Lease& lease, std::vector<std::vector<double>> s,
                                           std::vector<std::vector<std::vector<double>>> s_head = {});

  // Tables. version 0 = latest.
  absl::StatusOr<uint64_t> PublishTable(const SensitivityTable& table);
  absl::StatusOr<VersionedTable> GetTable(const std::string& model, uint64_t version = 0);
  // Blocks on the change feed until `model` has a version > after_version
  // and returns the oldest such event the client still holds (the next one
  // unless more than 256 arrived since); DeadlineExceeded after `timeout`.
  //
  // The first call for a model opens one WatchModelVersions stream for it
  // (from version 0: every version is known), which stays open for the
  // client's lifetime (read by a thread of its own) and serves every later
  // call; a call only waits for it. When the
  // stream fails it is opened again, with backoff, from the newest version
  // seen; while it is down, calls return its error (Unavailable, or
  // NotFound for an unknown model) at once instead of waiting.
  absl::StatusOr<VersionEvent> WaitForVersion(const std::string& model, uint64_t after_version,
                                              absl::Duration timeout);

 private:
  struct Impl;
  explicit RegistryClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moend::registry

#endif  // MOEND_SERVICES_REGISTRY_REGISTRY_CLIENT_H_

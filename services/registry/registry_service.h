// The registry's gRPC face: a thin adapter that converts moend.v1 messages to
// domain records, calls Registry, and converts back; plus a server wrapper.
#ifndef MOEND_SERVICES_REGISTRY_REGISTRY_SERVICE_H_
#define MOEND_SERVICES_REGISTRY_REGISTRY_SERVICE_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "moend/v1/registry.grpc.pb.h"
#include "services/common/security.h"
#include "services/registry/registry.h"

namespace moend::registry {

// Mutating calls (RegisterModel, SubmitJob, LeaseShard, Heartbeat,
// ReportShard, PublishTable) ask `auth` first and change nothing when it
// refuses; the rest are reads.
class RegistryService final : public v1::Registry::Service {
 public:
  // `registry` is not owned and must outlive the service.
  // At most `max_watch_streams` WatchModelVersions streams are open at once
  // (each holds a server thread); more are refused with RESOURCE_EXHAUSTED.
  // Calls that act for a worker (LeaseShard, Heartbeat, ReportShard) also ask
  // `workers` whether the caller may use the worker id it names.
  RegistryService(Registry* registry, absl::Duration watch_poll,
                  rpc::TokenAuthorizer auth = rpc::TokenAuthorizer(),
                  int64_t max_watch_streams = 128, rpc::WorkerIdentity workers = rpc::WorkerIdentity());
  // Ends every WatchModelVersions stream within one watch_poll.
  void Stop() { stopping_ = true; }
  // WatchModelVersions streams open now.
  int64_t open_watch_streams() const { return watch_streams_.load(); }

  grpc::Status RegisterModel(grpc::ServerContext*, const v1::RegisterModelRequest*,
                             v1::Model*) override;
  grpc::Status GetModel(grpc::ServerContext*, const v1::GetModelRequest*, v1::Model*) override;
  grpc::Status ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                          v1::ListModelsResponse*) override;
  grpc::Status SubmitJob(grpc::ServerContext*, const v1::SubmitJobRequest*,
                         v1::CalibrationJob*) override;
  grpc::Status GetJob(grpc::ServerContext*, const v1::GetJobRequest*,
                      v1::CalibrationJob*) override;
  grpc::Status ListJobs(grpc::ServerContext*, const v1::ListJobsRequest*,
                        v1::ListJobsResponse*) override;
  grpc::Status LeaseShard(grpc::ServerContext*, const v1::LeaseShardRequest*,
                          v1::LeaseShardResponse*) override;
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest*,
                         v1::HeartbeatResponse*) override;
  grpc::Status ReportShard(grpc::ServerContext*, const v1::ReportShardRequest*,
                           v1::ReportShardResponse*) override;
  grpc::Status PublishTable(grpc::ServerContext*, const v1::PublishTableRequest*,
                            v1::PublishTableResponse*) override;
  grpc::Status GetTable(grpc::ServerContext*, const v1::GetTableRequest*,
                        v1::GetTableResponse*) override;
  grpc::Status WatchModelVersions(grpc::ServerContext*, const v1::WatchModelVersionsRequest*,
                                  grpc::ServerWriter<v1::ModelVersionEvent>*) override;

 private:
  // The token check of a mutating call, then whether the caller may act for
  // `worker_id` (LeaseShard, Heartbeat, ReportShard).
  grpc::Status AuthorizeWorker(const grpc::ServerContext& context, const std::string& worker_id) const;

  Registry* const registry_;
  const absl::Duration watch_poll_;
  const rpc::TokenAuthorizer auth_;
  const rpc::WorkerIdentity workers_;
  const int64_t max_watch_streams_;
  std::atomic<int64_t> watch_streams_{0};
  std::atomic<bool> stopping_{false};
};

struct RegistryServerOptions {
  // host:port to listen on; port 0 picks a free port (see RegistryServer::address).
  // Default "127.0.0.1:0".
  std::string listen_address = "127.0.0.1:0";
  // How often a watch stream checks for cancellation and shutdown. Default 200 ms.
  absl::Duration watch_poll = absl::Milliseconds(200);
  // Largest message accepted, bytes. Default 16 MiB: a 1,000-layer x
  // 1,000-tuple table is 8 MB; every call in progress may hold this much.
  int max_message_bytes = 16 << 20;
  // Server threads (the service is synchronous: one thread per call in
  // progress); calls beyond are refused with RESOURCE_EXHAUSTED. Default 512.
  int max_threads = 512;
  // WatchModelVersions streams open at once (routers; each holds a thread).
  // Default 128.
  int64_t max_watch_streams = 128;
  // TLS and the bearer token. Default: plaintext, no token.
  rpc::ServerSecurity security;
};

class RegistryServer {
 public:
  // Serves `registry` (not owned; must outlive the server), with the health
  // service and reflection. FailedPrecondition when the address cannot be
  // bound; the error of LoadServerSecurity for bad security options.
  static absl::StatusOr<std::unique_ptr<RegistryServer>> Start(Registry* registry,
                                                               const RegistryServerOptions& options);
  ~RegistryServer();

  // "host:port" with the port actually bound.
  const std::string& address() const { return address_; }
  int port() const { return port_; }
  // The service's health through an in-process call (rpc::ServingInProcess);
  // false once Shutdown began. Not to be called while Shutdown runs.
  bool Serving() const;
  // WatchModelVersions streams open now (each router holds one per model).
  int64_t open_watch_streams() const { return service_->open_watch_streams(); }
  // Stops accepting calls, ends watch streams, and waits up to `grace` for
  // calls in flight. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(2));

 private:
  RegistryServer() = default;
  std::unique_ptr<RegistryService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  int port_ = 0;
  std::atomic<bool> shut_down_{false};
};

}  // namespace moend::registry

#endif  // MOEND_SERVICES_REGISTRY_REGISTRY_SERVICE_H_

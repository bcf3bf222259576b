// The router's gRPC face: a thin adapter over Router on gRPC's callback API
// (no thread is held per open WatchPlans stream), and a server wrapper. The
// callbacks only validate, look up the plan cache and convert: a cache miss
// (table-source call and solve) runs on the Router's solve threads
// (Router::SolvePlanAsync, WatchPlansAsync), which finish the call.
#ifndef MOEND_SERVICES_ROUTER_ROUTER_SERVICE_H_
#define MOEND_SERVICES_ROUTER_ROUTER_SERVICE_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "moend/v1/router.grpc.pb.h"
#include "services/common/security.h"
#include "services/router/router.h"

namespace moend::router {

// Both calls are reads: `auth` refuses them only when it requires the token
// for reads.
class RouterService final : public v1::Router::CallbackService {
 public:
  // `router` is not owned and must outlive the service. At most
  // `max_watch_streams` WatchPlans streams are open at once; more are refused
  // with RESOURCE_EXHAUSTED.
  explicit RouterService(Router* router, rpc::TokenAuthorizer auth = rpc::TokenAuthorizer(),
                         int64_t max_watch_streams = 20000)
      : router_(router), auth_(std::move(auth)), max_watch_streams_(max_watch_streams) {}

  grpc::ServerUnaryReactor* SolvePlan(grpc::CallbackServerContext* context,
                                      const v1::SolvePlanRequest* request,
                                      v1::Plan* response) override;
  // Sends the current plan, then each newer one. A stream that cannot keep up
  // gets only the newest plan once its previous write completes (older
  // pending plans are dropped, never queued).
  grpc::ServerWriteReactor<v1::Plan>* WatchPlans(grpc::CallbackServerContext* context,
                                                 const v1::WatchPlansRequest* request) override;

  // Ends every open WatchPlans stream with UNAVAILABLE (clients reconnect,
  // e.g. to another router) and refuses new ones. Idempotent.
  void Stop();

 private:
  class WatchReactor;
  void Remove(WatchReactor* reactor);

  Router* const router_;
  const rpc::TokenAuthorizer auth_;
  const int64_t max_watch_streams_;
  absl::Mutex mu_;
  bool stopping_ = false;
  absl::flat_hash_set<WatchReactor*> watches_;
};

struct RouterServerOptions {
  // host:port to listen on; port 0 picks a free port (see address()).
  // Default "127.0.0.1:0".
  std::string listen_address = "127.0.0.1:0";
  // Largest message accepted, bytes. Default 4 MiB (gRPC's default).
  int max_message_bytes = 4 << 20;
  // WatchPlans streams open at once (each holds a little memory, no thread);
  // more are refused with RESOURCE_EXHAUSTED. Default 20000.
  int64_t max_watch_streams = 20000;
  // TLS and the bearer token. Default: plaintext, no token.
  rpc::ServerSecurity security;
};

class RouterServer {
 public:
  // Serves `router` (not owned; must outlive the server), with the health
  // service and reflection. FailedPrecondition when the address cannot be
  // bound; the error of LoadServerSecurity for bad security options.
  static absl::StatusOr<std::unique_ptr<RouterServer>> Start(Router* router,
                                                             const RouterServerOptions& options);
  ~RouterServer();  // Shutdown()

  // The service's health through an in-process call (rpc::ServingInProcess);
  // false once Shutdown began. Not to be called while Shutdown runs.
  bool Serving() const;
  // "host:port" with the port actually bound.
  const std::string& address() const { return address_; }
  int port() const { return port_; }

  // Ends watch streams with UNAVAILABLE, stops accepting calls and waits up to
  // `grace` for unary calls in flight. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(2));

 private:
  RouterServer() = default;
  std::unique_ptr<RouterService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  int port_ = 0;
  std::atomic<bool> shut_down_{false};
};

}  // namespace moend::router

#endif  // MOEND_SERVICES_ROUTER_ROUTER_SERVICE_H_

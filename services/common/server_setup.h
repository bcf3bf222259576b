// What every moend gRPC server offers besides its own service: the standard
// health service (grpc.health.v1.Health, for Kubernetes grpc probes and load
// balancers) and server reflection (grpc.reflection.v1alpha, for grpcurl and
// grpc_cli). Both are open: they need no token.
//
//   EnableHealthAndReflection();          // before creating the ServerBuilder
//   grpc::ServerBuilder builder; ... server = builder.BuildAndStart();
//   SetServing(server.get(), {"moend.v1.Registry"}, true);
//   ... SetServing(server.get(), {"moend.v1.Registry"}, false); server->Shutdown();
#ifndef MOEND_SERVICES_COMMON_SERVER_SETUP_H_
#define MOEND_SERVICES_COMMON_SERVER_SETUP_H_

#include <functional>
#include <initializer_list>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"

namespace moend::rpc {

// Turns on the default health service and the reflection plugin for every
// ServerBuilder created afterwards (both are process-wide switches in gRPC).
// Idempotent.
void EnableHealthAndReflection();

// Sets the health status of the whole server ("") and of each named service.
// A server that has not enabled health is left alone.
void SetServing(grpc::Server* server, std::initializer_list<std::string> services, bool serving);

// How to start one moend server.
struct ServerSpec {
  std::string listen_address;  // host:port; port 0 picks a free port
  std::shared_ptr<grpc::ServerCredentials> credentials;
  bool tls = false;                // for the error message
  int max_message_bytes = 4 << 20;  // both directions
  grpc::Service* service = nullptr;  // not owned; outlives the server
  std::string service_name;         // for the health service, "moend.v1.Registry"
  // More settings (a resource quota, say), applied before the server starts.
  std::function<void(grpc::ServerBuilder&)> configure;
};

struct StartedServer {
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::string address;  // listen_address's host with the bound port
};

// Health and reflection on, SO_REUSEPORT off (a second process on a busy
// port must fail, not silently take half of the connections), the message
// limit, then the service; marked SERVING. FailedPrecondition naming the
// address when it cannot listen.
absl::StatusOr<StartedServer> StartServer(const ServerSpec& spec);

// Asks the server's own health service (grpc.health.v1.Health/Check for
// `service`) through an in-process channel: no network, no TLS, no token;
// the same answer a remote probe gets. True when it answers SERVING within
// `timeout`; false otherwise (NOT_SERVING once shutdown began, no answer).
// Must not be called once server->Shutdown() ran (gRPC crashes there). For
// HTTP health endpoints (/healthz) beside TLS-only gRPC ports, where
// Kubernetes' gRPC probes cannot connect.
bool ServingInProcess(grpc::Server* server, const std::string& service,
                      absl::Duration timeout = absl::Seconds(2));

}  // namespace moend::rpc

#endif  // MOEND_SERVICES_COMMON_SERVER_SETUP_H_

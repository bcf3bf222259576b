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

#include <initializer_list>
#include <string>

#include "grpcpp/server.h"

namespace moend::rpc {

// Turns on the default health service and the reflection plugin for every
// ServerBuilder created afterwards (both are process-wide switches in gRPC).
// Idempotent.
void EnableHealthAndReflection();

// Sets the health status of the whole server ("") and of each named service.
// A server that has not enabled health is left alone.
void SetServing(grpc::Server* server, std::initializer_list<std::string> services, bool serving);

}  // namespace moend::rpc

#endif  // MOEND_SERVICES_COMMON_SERVER_SETUP_H_

#include "services/common/server_setup.h"

#include <mutex>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"

namespace moend::rpc {

void EnableHealthAndReflection() {
  static std::once_flag once;
  std::call_once(once, [] {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  });
}

void SetServing(grpc::Server* server, std::initializer_list<std::string> services, bool serving) {
  if (server == nullptr) return;
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus(serving);
  for (const std::string& service : services) health->SetServingStatus(service, serving);
}

absl::StatusOr<StartedServer> StartServer(const ServerSpec& spec) {
  EnableHealthAndReflection();
  grpc::ServerBuilder builder;
  StartedServer started;
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(spec.listen_address, spec.credentials, &started.port);
  builder.SetMaxReceiveMessageSize(spec.max_message_bytes);
  builder.SetMaxSendMessageSize(spec.max_message_bytes);
  if (spec.configure) spec.configure(builder);
  builder.RegisterService(spec.service);
  started.server = builder.BuildAndStart();
  if (started.server == nullptr || started.port == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot listen on '", spec.listen_address,
                     "'; give host:port with a free port, or port 0 for any",
                     spec.tls ? " (or the TLS certificate and key do not match)" : ""));
  }
  SetServing(started.server.get(), {spec.service_name}, true);
  const size_t colon = spec.listen_address.rfind(':');
  started.address = absl::StrCat(spec.listen_address.substr(0, colon), ":", started.port);
  return started;
}

}  // namespace moend::rpc

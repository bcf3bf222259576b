#include "services/common/server_setup.h"

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/impl/codegen/client_unary_call.h"
#include "grpcpp/support/byte_buffer.h"

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

bool ServingInProcess(grpc::Server* server, const std::string& service, absl::Duration timeout) {
  if (server == nullptr) return false;
  std::shared_ptr<grpc::Channel> channel = server->InProcessChannel(grpc::ChannelArguments());
  if (channel == nullptr) return false;
  // HealthCheckRequest { string service = 1; } and HealthCheckResponse
  // { ServingStatus status = 1; } by hand: Debian ships no health protos.
  // SERVING (1) is encoded as exactly 08 01.
  if (service.size() > 127) return false;  // one-byte length below
  std::string request;
  if (!service.empty()) {
    request = std::string("\x0a", 1) + static_cast<char>(service.size()) + service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1), response;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  const grpc::Status status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      channel.get(), grpc::internal::RpcMethod("/grpc.health.v1.Health/Check", grpc::internal::RpcMethod::NORMAL_RPC),
      &context, request_buffer, &response);
  if (!status.ok()) return false;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return false;
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return bytes == std::string("\x08\x01", 2);
}

}  // namespace moend::rpc

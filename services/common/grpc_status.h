// absl::Status <-> grpc::Status for every gRPC edge (servers and clients).
// Abseil's codes are gRPC's codes, so both directions keep code and message.
#ifndef MOEND_SERVICES_COMMON_GRPC_STATUS_H_
#define MOEND_SERVICES_COMMON_GRPC_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace moend::rpc {

inline grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

inline absl::Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace moend::rpc

#endif  // MOEND_SERVICES_COMMON_GRPC_STATUS_H_

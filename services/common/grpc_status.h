// absl::Status <-> grpc::Status for every gRPC edge (servers and clients).
// Abseil's codes are gRPC's codes, so both directions keep code and message.
#ifndef MOEND_SERVICES_COMMON_GRPC_STATUS_H_
#define MOEND_SERVICES_COMMON_GRPC_STATUS_H_

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/support/status.h"

namespace moend::rpc {

// Longest status message a server sends. Messages quote what the client sent
// (names, ids); a client that sent megabytes must not get them back in the
// trailers, which gRPC limits to 8 KiB by default (the call would fail with
// an unrelated "metadata size exceeds limit" instead of the real error).
inline constexpr size_t kMaxStatusMessageBytes = 1024;

// A longer message keeps its start and its end (which says what is allowed,
// after the quoted input) and loses the middle: "<start>... (N bytes cut)
// ...<end>".
inline grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  std::string message(s.message());
  if (message.size() > kMaxStatusMessageBytes) {
    constexpr size_t kHead = kMaxStatusMessageBytes / 2, kTail = kMaxStatusMessageBytes / 2;
    const size_t omitted = message.size() - kHead - kTail;
    message = absl::StrCat(message.substr(0, kHead), "... (", omitted, " bytes cut) ...",
                           message.substr(message.size() - kTail));
  }
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::move(message));
}

inline absl::Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace moend::rpc

#endif  // MOEND_SERVICES_COMMON_GRPC_STATUS_H_

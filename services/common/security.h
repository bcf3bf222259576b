// Transport security and bearer-token authorization shared by every moend
// server (registry, router, node) and client (registry client, plan client).
//
// Server side: ServerSecurity names the files; LoadServerSecurity reads them
// once and gives the listening port's credentials plus a TokenAuthorizer that
// each gRPC adapter asks at the top of its handlers:
//
//   MOEND_ASSIGN_OR_RETURN(ServerSecuritySetup setup, LoadServerSecurity(options.security));
//   builder.AddListeningPort(address, setup.credentials, &port);
//   ...
//   grpc::Status Service::RegisterModel(grpc::ServerContext* ctx, ...) {
//     if (grpc::Status s = auth_.Mutating(*ctx); !s.ok()) return s;  // before any effect
//
// Client side: ClientSecurity names the files; CreateChannel gives a channel
// (TLS or plaintext) that carries the token on every call as
// "authorization: Bearer <token>".
//
// Defaults everywhere are plaintext and no token (loopback development), i.e.
// the behaviour of the services before security existed.
#ifndef MOEND_SERVICES_COMMON_SECURITY_H_
#define MOEND_SERVICES_COMMON_SECURITY_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/status.h"

namespace moend::rpc {

struct ServerSecurity {
  // PEM certificate chain and private key of the server. Both set = serve TLS
  // only (plaintext connections are refused); both empty = plaintext.
  // Default: plaintext.
  std::string tls_cert_file;
  std::string tls_key_file;
  // PEM CA bundle. Set = every client must present a certificate that this CA
  // signed (mutual TLS); needs tls_cert_file. Default: no client certificate.
  std::string tls_client_ca_file;
  // Bearer token that mutating calls must carry; "" = none required. Either
  // give it here or in auth_token_file (its content, surrounding whitespace
  // trimmed; an empty file is an error). Default: no token.
  std::string auth_token;
  std::string auth_token_file;
  // Require the token on read calls too (health and reflection stay open so
  // probes work). Default false: reads are open.
  bool token_for_reads = false;
  // Registry: calls that act for a worker (LeaseShard, Heartbeat,
  // ReportShard) must come from a client whose certificate names that
  // worker id, as its subject CN or one of its DNS subject alternative names;
  // others get PERMISSION_DENIED. Needs tls_client_ca_file. Default false
  // (any client that passes the other checks may use any worker id).
  bool bind_worker_ids = false;

  bool tls() const { return !tls_cert_file.empty() || !tls_key_file.empty(); }
};

// Decides whether a call may proceed from its "authorization" metadata.
// Default-constructed: everything is allowed. Copyable and thread-safe.
class TokenAuthorizer {
 public:
  TokenAuthorizer() = default;
  TokenAuthorizer(std::string token, bool token_for_reads)
      : token_(std::move(token)), token_for_reads_(token_for_reads) {}

  // For calls that change state (or spend the server's resources on the
  // caller's behalf): OK, or UNAUTHENTICATED when a token is configured and
  // the call does not carry "authorization: Bearer <token>".
  grpc::Status Mutating(const grpc::ServerContextBase& context) const;
  // For read calls: like Mutating when token_for_reads, else always OK.
  grpc::Status Read(const grpc::ServerContextBase& context) const;

  bool token_required() const { return !token_.empty(); }

 private:
  grpc::Status Check(const grpc::ServerContextBase& context) const;
  std::string token_;
  bool token_for_reads_ = false;
};

// The names the verified client certificate of a call carries: its subject
// CN, then its DNS subject alternative names. Empty without one (plaintext,
// or TLS without client certificates).
std::vector<std::string> PeerCertificateNames(const grpc::ServerContextBase& context);

// Decides whether a call may act for a worker id. Default-constructed (or
// unbound): any id. Bound: only ids that PeerCertificateNames lists.
class WorkerIdentity {
 public:
  WorkerIdentity() = default;
  explicit WorkerIdentity(bool bound) : bound_(bound) {}

  // OK, or PERMISSION_DENIED naming the id and the certificate's names.
  grpc::Status Check(const grpc::ServerContextBase& context, absl::string_view worker_id) const;

 private:
  bool bound_ = false;
};

struct ServerSecuritySetup {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  TokenAuthorizer authorizer;
  WorkerIdentity workers;
  bool tls = false;
};

// Reads and checks the files. InvalidArgument for an inconsistent setting
// (a certificate without its key, a client CA without TLS); NotFound /
// PermissionDenied / InvalidArgument naming the file that is missing,
// unreadable, empty or not PEM.
absl::StatusOr<ServerSecuritySetup> LoadServerSecurity(const ServerSecurity& security);

struct ClientSecurity {
  // PEM CA bundle that signed the server's certificate. Set = connect with
  // TLS and verify the server against it; "" = plaintext. Default plaintext.
  std::string tls_ca_file;
  // PEM certificate chain and key presented to servers that require client
  // certificates; both or neither, and only with tls_ca_file. Default none.
  std::string tls_client_cert_file;
  std::string tls_client_key_file;
  // Bearer token sent on every call ("authorization: Bearer <token>"), given
  // here or in auth_token_file (trimmed). Default none. Over plaintext the
  // token crosses the wire in clear: use TLS beyond loopback.
  std::string auth_token;
  std::string auth_token_file;

  bool tls() const { return !tls_ca_file.empty(); }
};

// A channel to `target` with `args`, TLS or plaintext, carrying the token.
// Over TLS the token is a call credential (gRPC never sends it on an
// unencrypted connection); over plaintext, where gRPC refuses call
// credentials, a client interceptor adds the same header. Errors as
// LoadServerSecurity's; nothing is connected yet.
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(
    const std::string& target, const ClientSecurity& security,
    const grpc::ChannelArguments& args = grpc::ChannelArguments());

// The subject CN of the first certificate in the PEM file `file` (a worker's
// default id under --bind-worker-ids). Errors name the file: NotFound /
// PermissionDenied when it cannot be read, InvalidArgument when it holds no
// PEM certificate or the certificate has no CN.
absl::StatusOr<std::string> CertificateCommonName(const std::string& file);

// The token in `file`, surrounding whitespace trimmed; an error naming the
// file when it cannot be read or is empty.
absl::StatusOr<std::string> ReadTokenFile(const std::string& file);

}  // namespace moend::rpc

#endif  // MOEND_SERVICES_COMMON_SECURITY_H_

#include "services/common/security.h"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status_macros.h"
#include "grpc/grpc_security_constants.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/support/client_interceptor.h"
#include "openssl/bio.h"
#include "openssl/pem.h"
#include "openssl/x509.h"
#include "services/common/grpc_status.h"

namespace moend::rpc {
namespace {

constexpr char kAuthorizationKey[] = "authorization";
constexpr char kBearerPrefix[] = "Bearer ";

// A PEM file's content; errors name `what` and the file.
absl::StatusOr<std::string> ReadPem(const std::string& file, const std::string& what) {
  absl::StatusOr<std::string> pem = ReadFile(file);
  if (!pem.ok()) {
    return absl::Status(pem.status().code(),
                        absl::StrCat("cannot read ", what, ": ", pem.status().message()));
  }
  if (!absl::StrContains(*pem, "-----BEGIN ")) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", file, "' is not PEM (no '-----BEGIN' line)"));
  }
  return pem;
}

// The token from `token` or `token_file` (not both).
absl::StatusOr<std::string> ResolveToken(const std::string& token, const std::string& token_file) {
  if (!token.empty() && !token_file.empty()) {
    return absl::InvalidArgumentError("give the auth token or the auth token file, not both");
  }
  if (!token_file.empty()) return ReadTokenFile(token_file);
  return std::string(absl::StripAsciiWhitespace(token));
}

// Compares without an early exit, so the time taken does not reveal how long
// a prefix of a guessed token was right.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = b.size();
  for (size_t i = 0; i < n; ++i) {
    diff |= static_cast<unsigned char>(b[i] ^ (i < a.size() ? a[i] : 0));
  }
  return diff == 0;
}

class BearerTokenPlugin final : public grpc::MetadataCredentialsPlugin {
 public:
  explicit BearerTokenPlugin(std::string token) : header_(absl::StrCat(kBearerPrefix, token)) {}
  bool IsBlocking() const override { return false; }
  const char* GetType() const override { return "moend.bearer"; }
  grpc::Status GetMetadata(grpc::string_ref, grpc::string_ref, const grpc::AuthContext&,
                           std::multimap<grpc::string, grpc::string>* metadata) override {
    metadata->emplace(kAuthorizationKey, header_);
    return grpc::Status::OK;
  }

 private:
  const std::string header_;
};

// Adds the bearer header to every call of a plaintext channel.
class BearerTokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerTokenInterceptor(const std::string* header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace(kAuthorizationKey, *header_);
    }
    methods->Proceed();
  }

 private:
  const std::string* header_;  // owned by the factory, which the channel outlives
};

class BearerTokenInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerTokenInterceptorFactory(const std::string& token)
      : header_(absl::StrCat(kBearerPrefix, token)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new BearerTokenInterceptor(&header_);
  }

 private:
  const std::string header_;
};

}  // namespace

absl::StatusOr<std::string> ReadTokenFile(const std::string& file) {
  absl::StatusOr<std::string> content = ReadFile(file);
  if (!content.ok()) {
    return absl::Status(content.status().code(),
                        absl::StrCat("cannot read the auth token file: ",
                                     content.status().message()));
  }
  std::string token(absl::StripAsciiWhitespace(*content));
  if (token.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("the auth token file '", file, "' is empty"));
  }
  for (char c : token) {
    // A header value: printable ASCII without spaces.
    if (c <= ' ' || c > '~') {
      return absl::InvalidArgumentError(absl::StrCat(
          "the auth token in '", file,
          "' must be one word of printable ASCII (no spaces or control characters)"));
    }
  }
  return token;
}

grpc::Status TokenAuthorizer::Check(const grpc::ServerContextBase& context) const {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kAuthorizationKey);
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "this call needs 'authorization: Bearer <token>' (the server was "
                        "started with an auth token)");
  }
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::StartsWith(value, kBearerPrefix) ||
      !ConstantTimeEquals(value.substr(sizeof(kBearerPrefix) - 1), token_)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the bearer token is not valid");
  }
  return grpc::Status::OK;
}

grpc::Status TokenAuthorizer::Mutating(const grpc::ServerContextBase& context) const {
  if (token_.empty()) return grpc::Status::OK;
  return Check(context);
}

grpc::Status TokenAuthorizer::Read(const grpc::ServerContextBase& context) const {
  if (token_.empty() || !token_for_reads_) return grpc::Status::OK;
  return Check(context);
}

absl::StatusOr<std::string> CertificateCommonName(const std::string& file) {
  MOEND_ASSIGN_OR_RETURN(std::string pem, ReadPem(file, "the certificate"));
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())),
                                                &BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      bio == nullptr ? nullptr : PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr), &X509_free);
  if (cert == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("'", file, "' holds no PEM certificate"));
  }
  const X509_NAME* subject = X509_get_subject_name(cert.get());
  const int at = subject == nullptr ? -1 : X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  const ASN1_STRING* cn = at < 0 ? nullptr : X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at));
  if (cn == nullptr || ASN1_STRING_length(cn) <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("the certificate in '", file, "' has no subject CN"));
  }
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(cn)),
                     static_cast<size_t>(ASN1_STRING_length(cn)));
}

std::vector<std::string> PeerCertificateNames(const grpc::ServerContextBase& context) {
  std::vector<std::string> names;
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return names;
  for (const char* property : {GRPC_X509_CN_PROPERTY_NAME, GRPC_PEER_DNS_PROPERTY_NAME}) {
    for (const grpc::string_ref& v : auth->FindPropertyValues(property)) {
      std::string name(v.data(), v.size());
      if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(std::move(name));
    }
  }
  return names;
}

grpc::Status WorkerIdentity::Check(const grpc::ServerContextBase& context, absl::string_view worker_id) const {
  if (!bound_) return grpc::Status::OK;
  const std::vector<std::string> names = PeerCertificateNames(context);
  if (std::find(names.begin(), names.end(), worker_id) != names.end()) return grpc::Status::OK;
  // The client's id goes last: ToGrpcStatus caps the message, and a huge id
  // must not push out the explanation.
  std::string listed;
  for (const std::string& n : names) absl::StrAppend(&listed, listed.empty() ? "'" : ", '", n, "'");
  return ToGrpcStatus(absl::PermissionDeniedError(absl::StrCat(
      "this registry binds worker ids to client certificates (--bind-worker-ids) and the caller's "
      "certificate names ",
      names.empty() ? "nothing (no verified client certificate)" : listed, ": worker id '", worker_id,
      "' is not a name of this client's certificate")));
}

absl::StatusOr<ServerSecuritySetup> LoadServerSecurity(const ServerSecurity& security) {
  ServerSecuritySetup setup;
  if (security.bind_worker_ids && security.tls_client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "binding worker ids to client certificates needs mutual TLS: give the client CA too");
  }
  setup.workers = WorkerIdentity(security.bind_worker_ids);
  MOEND_ASSIGN_OR_RETURN(std::string token,
                         ResolveToken(security.auth_token, security.auth_token_file));
  if (security.token_for_reads && token.empty()) {
    return absl::InvalidArgumentError("requiring the token for reads needs an auth token");
  }
  setup.authorizer = TokenAuthorizer(std::move(token), security.token_for_reads);
  if (!security.tls()) {
    if (!security.tls_client_ca_file.empty()) {
      return absl::InvalidArgumentError(
          "a client CA (mutual TLS) needs TLS: give the server certificate and key too");
    }
    setup.credentials = grpc::InsecureServerCredentials();
    return setup;
  }
  if (security.tls_cert_file.empty() || security.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs both the server certificate file and its private key file");
  }
  grpc::SslServerCredentialsOptions options;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  MOEND_ASSIGN_OR_RETURN(pair.cert_chain, ReadPem(security.tls_cert_file, "the TLS certificate"));
  MOEND_ASSIGN_OR_RETURN(pair.private_key, ReadPem(security.tls_key_file, "the TLS private key"));
  options.pem_key_cert_pairs.push_back(std::move(pair));
  if (!security.tls_client_ca_file.empty()) {
    MOEND_ASSIGN_OR_RETURN(options.pem_root_certs,
                           ReadPem(security.tls_client_ca_file, "the TLS client CA"));
    options.client_certificate_request =
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  } else {
    options.client_certificate_request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  }
  setup.credentials = grpc::SslServerCredentials(options);
  setup.tls = true;
  return setup;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const std::string& target,
                                                            const ClientSecurity& security,
                                                            const grpc::ChannelArguments& args) {
  MOEND_ASSIGN_OR_RETURN(std::string token,
                         ResolveToken(security.auth_token, security.auth_token_file));
  const bool has_cert = !security.tls_client_cert_file.empty();
  const bool has_key = !security.tls_client_key_file.empty();
  if (has_cert != has_key) {
    return absl::InvalidArgumentError(
        "a TLS client certificate needs its private key, and the other way round");
  }
  if (!security.tls()) {
    if (has_cert) {
      return absl::InvalidArgumentError(
          "a TLS client certificate needs TLS: give the CA that signed the server's certificate");
    }
    if (token.empty()) {
      return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    }
    std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> bearer;
    bearer.push_back(std::make_unique<BearerTokenInterceptorFactory>(token));
    return grpc::experimental::CreateCustomChannelWithInterceptors(
        target, grpc::InsecureChannelCredentials(), args, std::move(bearer));
  }
  grpc::SslCredentialsOptions options;
  MOEND_ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(security.tls_ca_file, "the TLS CA"));
  if (has_cert) {
    MOEND_ASSIGN_OR_RETURN(options.pem_cert_chain,
                           ReadPem(security.tls_client_cert_file, "the TLS client certificate"));
    MOEND_ASSIGN_OR_RETURN(options.pem_private_key,
                           ReadPem(security.tls_client_key_file, "the TLS client key"));
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::SslCredentials(options);
  if (!token.empty()) {
    auto bearer = grpc::MetadataCredentialsFromPlugin(std::make_unique<BearerTokenPlugin>(token));
    credentials = grpc::CompositeChannelCredentials(credentials, bearer);
  }
  return grpc::CreateCustomChannel(target, credentials, args);
}

}  // namespace moend::rpc

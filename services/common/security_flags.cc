#include "services/common/security_flags.h"

namespace moend::rpc {

std::set<std::string> WithFlags(std::set<std::string> flags, const std::set<std::string>& more) {
  flags.insert(more.begin(), more.end());
  return flags;
}

ServerSecurity ServerSecurityFromArgs(const Args& args) {
  ServerSecurity s;
  s.tls_cert_file = args.Optional("tls-cert").value_or("");
  s.tls_key_file = args.Optional("tls-key").value_or("");
  s.tls_client_ca_file = args.Optional("tls-client-ca").value_or("");
  s.auth_token_file = args.Optional("auth-token-file").value_or("");
  s.token_for_reads = args.Has(kAuthReadsSwitch);
  return s;
}

ClientSecurity ClientSecurityFromArgs(const Args& args) {
  ClientSecurity s;
  s.tls_ca_file = args.Optional("tls-ca").value_or("");
  s.tls_client_cert_file = args.Optional("tls-client-cert").value_or("");
  s.tls_client_key_file = args.Optional("tls-client-key").value_or("");
  s.auth_token_file = args.Optional("auth-token-file").value_or("");
  return s;
}

}  // namespace moend::rpc

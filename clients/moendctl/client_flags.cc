#include "clients/moendctl/client_flags.h"

namespace moend::ctl {

std::set<std::string> WithClientSecurityFlags(std::set<std::string> flags) {
  flags.insert({"tls-ca", "tls-client-cert", "tls-client-key", "auth-token-file"});
  return flags;
}

#ifdef MOEND_WITH_REGISTRY
rpc::ClientSecurity ClientSecurityFromFlags(const Args& args) {
  rpc::ClientSecurity security;
  security.tls_ca_file = args.Optional("tls-ca").value_or("");
  security.tls_client_cert_file = args.Optional("tls-client-cert").value_or("");
  security.tls_client_key_file = args.Optional("tls-client-key").value_or("");
  security.auth_token_file = args.Optional("auth-token-file").value_or("");
  return security;
}
#endif

}  // namespace moend::ctl

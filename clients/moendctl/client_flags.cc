#include "clients/moendctl/client_flags.h"

#ifdef MOEND_WITH_REGISTRY
#include "services/common/security_flags.h"
#endif

namespace moend::ctl {

std::set<std::string> WithClientSecurityFlags(std::set<std::string> flags) {
  flags.insert({"tls-ca", "tls-client-cert", "tls-client-key", "auth-token-file"});
  return flags;
}

#ifdef MOEND_WITH_REGISTRY
rpc::ClientSecurity ClientSecurityFromFlags(const Args& args) {
  return rpc::ClientSecurityFromArgs(args);
}
#endif

}  // namespace moend::ctl

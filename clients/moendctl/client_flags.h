// The connection flags every moendctl command that talks to a server takes:
// --tls-ca, --tls-client-cert, --tls-client-key, --auth-token-file.
#ifndef MOEND_CLIENTS_MOENDCTL_CLIENT_FLAGS_H_
#define MOEND_CLIENTS_MOENDCTL_CLIENT_FLAGS_H_

#include <set>
#include <string>

#include "core/flags.h"

#ifdef MOEND_WITH_REGISTRY
#include "services/common/security.h"
#endif

namespace moend::ctl {

// `flags` plus the connection flags, for Args::Parse.
std::set<std::string> WithClientSecurityFlags(std::set<std::string> flags);

// One usage paragraph describing them.
inline constexpr char kClientSecurityUsage[] =
    "Security: --tls-ca FILE [--tls-client-cert FILE --tls-client-key FILE] connects\n"
    "with TLS; --auth-token-file FILE sends its bearer token.\n";

#ifdef MOEND_WITH_REGISTRY
// The ClientSecurity the parsed flags name (plaintext without --tls-ca).
rpc::ClientSecurity ClientSecurityFromFlags(const Args& args);
#endif

}  // namespace moend::ctl

#endif  // MOEND_CLIENTS_MOENDCTL_CLIENT_FLAGS_H_

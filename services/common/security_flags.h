// The security flags every moend binary takes, parsed with core/flags.h:
// a server's own port (--tls-cert, --tls-key, --tls-client-ca,
// --auth-token-file, --auth-reads) and its connection to another server
// (--tls-ca, --tls-client-cert, --tls-client-key, --auth-token-file).
#ifndef MOEND_SERVICES_COMMON_SECURITY_FLAGS_H_
#define MOEND_SERVICES_COMMON_SECURITY_FLAGS_H_

#include <set>
#include <string>

#include "core/flags.h"
#include "services/common/security.h"

namespace moend::rpc {

// Value flags of a server's own port, for Args::Parse; the switch
// "auth-reads" goes with them.
inline const std::set<std::string> kServerSecurityFlags = {"tls-cert", "tls-key", "tls-client-ca",
                                                           "auth-token-file"};
inline constexpr char kAuthReadsSwitch[] = "auth-reads";
// Value flags of a connection to another server.
inline const std::set<std::string> kClientSecurityFlags = {"tls-ca", "tls-client-cert",
                                                           "tls-client-key", "auth-token-file"};

// `flags` plus each of `more`.
std::set<std::string> WithFlags(std::set<std::string> flags, const std::set<std::string>& more);

// What the parsed flags name; unset flags are empty (plaintext, no token).
ServerSecurity ServerSecurityFromArgs(const Args& args);
ClientSecurity ClientSecurityFromArgs(const Args& args);

}  // namespace moend::rpc

#endif  // MOEND_SERVICES_COMMON_SECURITY_FLAGS_H_

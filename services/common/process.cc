#include "services/common/process.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace moend::rpc {
namespace {

int g_signal_pipe[2] = {-1, -1};

void OnSignal(int sig) {
  const unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] ssize_t n = ::write(g_signal_pipe[1], &b, 1);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShutdownSignal>> ShutdownSignal::Install() {
  if (g_signal_pipe[0] >= 0) return absl::FailedPreconditionError("signal handlers already installed");
  if (::pipe(g_signal_pipe) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  return std::unique_ptr<ShutdownSignal>(new ShutdownSignal());
}

int ShutdownSignal::Wait() {
  unsigned char sig = 0;
  while (::read(g_signal_pipe[0], &sig, 1) != 1) {
  }
  return sig;
}

absl::StatusOr<MetricsEndpoint> ServeMetrics(const std::string& address,
                                             std::shared_ptr<prometheus::Registry> metrics) {
  MetricsEndpoint endpoint;
  try {
    endpoint.exposer = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on '", address, "': ", e.what()));
  }
  endpoint.exposer->RegisterCollectable(metrics);
  const auto ports = endpoint.exposer->GetListeningPorts();
  endpoint.address = absl::StrCat(address.substr(0, address.rfind(':')), ":",
                                  ports.empty() ? std::string("?") : std::to_string(ports[0]));
  return endpoint;
}

}  // namespace moend::rpc

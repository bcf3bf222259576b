// What every moend server process does around its main loop: wait for
// SIGTERM/SIGINT safely with library threads about, and serve /metrics.
#ifndef MOEND_SERVICES_COMMON_PROCESS_H_
#define MOEND_SERVICES_COMMON_PROCESS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"

namespace moend::rpc {

// Installs SIGTERM and SIGINT handlers that only write the signal number to a
// self-pipe (a signal may land on any thread: libraries start threads before
// main, so a blocked mask would not cover them). Once per process.
class ShutdownSignal {
 public:
  static absl::StatusOr<std::unique_ptr<ShutdownSignal>> Install();
  // Blocks until SIGTERM or SIGINT; returns its number.
  int Wait();

 private:
  ShutdownSignal() = default;
};

// A Prometheus exposer on `address` ("host:port", port 0 picks one) serving
// `metrics` at /metrics, and the address it really bound.
struct MetricsEndpoint {
  std::unique_ptr<prometheus::Exposer> exposer;
  std::string address;
};
// Unavailable, naming the address, when it cannot listen.
absl::StatusOr<MetricsEndpoint> ServeMetrics(const std::string& address,
                                             std::shared_ptr<prometheus::Registry> metrics);

}  // namespace moend::rpc

#endif  // MOEND_SERVICES_COMMON_PROCESS_H_

// What every moend server process does around its main loop: wait for
// SIGTERM/SIGINT safely with library threads about, and serve /metrics.
#ifndef MOEND_SERVICES_COMMON_PROCESS_H_
#define MOEND_SERVICES_COMMON_PROCESS_H_

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
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

// A minimal HTTP/1.x server for Prometheus scrapes: GET /metrics answers the
// registry in the text exposition format; GET /healthz answers 200 "SERVING"
// when the health check set by SetHealthCheck returns true, else 503
// "NOT_SERVING" (also before one is set); anything else 404. One thread,
// one request per connection. (Our own rather than prometheus-cpp's civetweb
// Exposer, which fails in processes that load the CUDA libraries; see
// docs/KNOWN_ISSUES.md.)
class MetricsServer {
 public:
  // Listens on "host:port" (IPv4; port 0 picks one). Unavailable, naming the
  // address, when it cannot.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> metrics);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // "host:port" actually bound.
  const std::string& address() const { return address_; }

  // What GET /healthz asks (rpc::ServingInProcess, say); nullptr = not
  // serving. Waits for a check in progress, so that after
  // SetHealthCheck(nullptr) the old one is no longer called.
  void SetHealthCheck(std::function<bool()> check);

 private:
  MetricsServer() = default;
  void Serve();

  int fd_ = -1;
  std::string address_;
  std::shared_ptr<prometheus::Registry> metrics_;
  std::mutex health_mu_;
  std::function<bool()> health_;  // guarded by health_mu_
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Gives freed heap memory back to the kernel: fixes glibc's mmap threshold at
// 256 KiB (process-wide), and every `period`, when the arenas hold more than
// `slack` bytes free, calls malloc_trim(0). Without it a server that refused
// a burst of large requests (gRPC buffers them in slices across per-thread
// arenas) keeps their pages resident at its high-water mark. One per process;
// stops (joins) on destruction.
class MemoryTrimmer {
 public:
  explicit MemoryTrimmer(absl::Duration period = absl::Seconds(5), size_t slack = size_t{1} << 20);
  ~MemoryTrimmer();
  MemoryTrimmer(const MemoryTrimmer&) = delete;
  MemoryTrimmer& operator=(const MemoryTrimmer&) = delete;

 private:
  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;  // guarded by mu_
  std::thread thread_;
};

struct MetricsEndpoint {
  std::unique_ptr<MetricsServer> server;
  std::string address;
};
// MetricsServer::Start, with the bound address alongside.
absl::StatusOr<MetricsEndpoint> ServeMetrics(const std::string& address,
                                             std::shared_ptr<prometheus::Registry> metrics);

// What a moend server's main does around its service: SIGTERM/SIGINT
// handling (ShutdownSignal), the optional /metrics endpoint with a /healthz
// that follows the service, and the lines on stdout that scripts and tests
// wait for: "<program> listening on HOST:PORT", "<program> metrics on
// http://HOST:PORT/metrics" and "<program>: signal N, shutting down". One
// per process.
class ServerMain {
 public:
  // `program` ("moend-registry") starts every line. With a non-empty
  // `metrics_address`, serves the metrics there (the error of ServeMetrics
  // when it cannot).
  static absl::StatusOr<std::unique_ptr<ServerMain>> Start(std::string program,
                                                           const std::string& metrics_address);

  // Where the process's components register their metrics.
  const std::shared_ptr<prometheus::Registry>& metrics() const { return metrics_; }

  // Announces `address`, lets /healthz answer with `serving` until SIGTERM
  // or SIGINT arrives, prints the shutdown line and stops asking `serving`
  // (the caller shuts its server down next). Returns the signal.
  int ServeUntilSignal(const std::string& address, std::function<bool()> serving);

 private:
  ServerMain() = default;
  std::string program_;
  std::unique_ptr<ShutdownSignal> shutdown_;
  std::shared_ptr<prometheus::Registry> metrics_;
  MetricsEndpoint endpoint_;
};

// A main's exit after a failed step: prints "<program>: <message>" on stderr
// and returns the exit status, 2 for InvalidArgument (a bad flag or
// argument) and 1 otherwise.
int ExitFailure(const char* program, const absl::Status& status);

}  // namespace moend::rpc

#endif  // MOEND_SERVICES_COMMON_PROCESS_H_

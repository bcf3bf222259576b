// moend-registry --db DIR --listen ADDR [--metrics ADDR] [--lease-seconds N]
//                [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
//                [--auth-token-file FILE [--auth-reads]]
//
// Serves the registry over gRPC on ADDR (port 0 picks a free port) and prints
// "moend-registry listening on HOST:PORT" once it accepts calls. With
// --metrics, serves Prometheus metrics at http://ADDR/metrics. SIGTERM or
// SIGINT shuts down gracefully.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/time/time.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "services/common/security.h"
#include "services/registry/registry.h"
#include "services/registry/registry_service.h"
#include "storage/store.h"

namespace {

constexpr char kUsage[] =
    "usage: moend-registry --db DIR --listen HOST:PORT [--metrics HOST:PORT] "
    "[--lease-seconds N]\n"
    "  --db DIR            RocksDB folder (created if missing)\n"
    "  --listen HOST:PORT  gRPC address; port 0 picks a free port (default 127.0.0.1:7001)\n"
    "  --metrics HOST:PORT serve Prometheus /metrics there (default: off)\n"
    "  --lease-seconds N   shard lease duration without heartbeat (default 60)\n"
    "  --tls-cert FILE     PEM server certificate chain: serve TLS only (default: plaintext)\n"
    "  --tls-key FILE      PEM private key of --tls-cert\n"
    "  --tls-client-ca FILE  require client certificates signed by this PEM CA (mutual TLS)\n"
    "  --auth-token-file FILE  mutating calls (RegisterModel, SubmitJob, LeaseShard,\n"
    "                      Heartbeat, ReportShard, PublishTable) need\n"
    "                      'authorization: Bearer <token in FILE>' (default: no token)\n"
    "  --auth-reads        require the token on read calls too (health and reflection\n"
    "                      stay open)\n";

struct Flags {
  std::string db;
  std::string listen = "127.0.0.1:7001";
  std::string metrics;
  int64_t lease_seconds = 60;
  moend::rpc::ServerSecurity security;
};

bool ParseFlags(int argc, char** argv, Flags* flags) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    if (size_t eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--auth-reads") {
      flags->security.token_for_reads = true;
      continue;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::cerr << "moend-registry: " << arg << " needs a value\n" << kUsage;
      return false;
    }
    if (arg == "--db") {
      flags->db = value;
    } else if (arg == "--listen") {
      flags->listen = value;
    } else if (arg == "--metrics") {
      flags->metrics = value;
    } else if (arg == "--tls-cert") {
      flags->security.tls_cert_file = value;
    } else if (arg == "--tls-key") {
      flags->security.tls_key_file = value;
    } else if (arg == "--tls-client-ca") {
      flags->security.tls_client_ca_file = value;
    } else if (arg == "--auth-token-file") {
      flags->security.auth_token_file = value;
    } else if (arg == "--lease-seconds") {
      if (!absl::SimpleAtoi(value, &flags->lease_seconds) || flags->lease_seconds <= 0) {
        std::cerr << "moend-registry: --lease-seconds must be a positive integer, got '" << value
                  << "'\n";
        return false;
      }
    } else {
      std::cerr << "moend-registry: unknown flag " << arg << "\n" << kUsage;
      return false;
    }
  }
  if (flags->db.empty()) {
    std::cerr << "moend-registry: --db is required\n" << kUsage;
    return false;
  }
  return true;
}

// Self-pipe: the handler (any thread) writes the signal number; main reads it.
int g_signal_pipe[2] = {-1, -1};

void OnSignal(int sig) {
  unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] ssize_t n = ::write(g_signal_pipe[1], &b, 1);
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  if (!ParseFlags(argc, argv, &flags)) return 2;

  // SIGTERM/SIGINT may land on any thread (libraries start threads before
  // main); the handler only writes to a pipe that main waits on.
  if (::pipe(g_signal_pipe) != 0) {
    std::perror("moend-registry: pipe");
    return 1;
  }
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);

  auto metrics = std::make_shared<prometheus::Registry>();
  std::unique_ptr<prometheus::Exposer> exposer;
  std::string metrics_address;
  if (!flags.metrics.empty()) {
    try {
      exposer = std::make_unique<prometheus::Exposer>(flags.metrics);
    } catch (const std::exception& e) {
      std::cerr << "moend-registry: cannot serve metrics on '" << flags.metrics
                << "': " << e.what() << "\n";
      return 1;
    }
    exposer->RegisterCollectable(metrics);
    auto ports = exposer->GetListeningPorts();
    metrics_address = flags.metrics.substr(0, flags.metrics.rfind(':')) + ":" +
                      (ports.empty() ? std::string("?") : std::to_string(ports[0]));
  }

  auto store = moend::storage::Store::Open({.path = flags.db});
  if (!store.ok()) {
    std::cerr << "moend-registry: " << store.status() << "\n";
    return 1;
  }
  moend::registry::RegistryOptions options;
  options.lease_duration = absl::Seconds(flags.lease_seconds);
  options.metrics = metrics.get();
  auto registry = moend::registry::Registry::Open(std::move(store).value(), options);
  if (!registry.ok()) {
    std::cerr << "moend-registry: " << registry.status() << "\n";
    return 1;
  }
  auto server = moend::registry::RegistryServer::Start(
      registry->get(), {.listen_address = flags.listen, .security = flags.security});
  if (!server.ok()) {
    std::cerr << "moend-registry: " << server.status() << "\n";
    return 1;
  }
  if (!flags.security.auth_token_file.empty() && !flags.security.tls()) {
    std::cerr << "moend-registry: warning: the auth token travels in clear without TLS "
                 "(--tls-cert/--tls-key)\n";
  }
  std::cout << "moend-registry: " << (flags.security.tls() ? "TLS" : "plaintext")
            << (flags.security.tls_client_ca_file.empty() ? "" : ", client certificates required")
            << (flags.security.auth_token_file.empty() ? ", no auth token"
                                                       : ", auth token required")
            << std::endl;
  std::cout << "moend-registry listening on " << (*server)->address() << std::endl;
  if (exposer) std::cout << "moend-registry metrics on http://" << metrics_address << "/metrics" << std::endl;

  unsigned char sig = 0;
  while (::read(g_signal_pipe[0], &sig, 1) != 1) {
  }
  std::cout << "moend-registry: signal " << static_cast<int>(sig) << ", shutting down"
            << std::endl;
  (*server)->Shutdown(absl::Seconds(5));
  (*registry)->Shutdown();
  return 0;
}

// moend-router --registry ADDR --listen ADDR [--metrics ADDR] [options]
//
// Serves the Router gRPC service (SolvePlan, WatchPlans) on ADDR over the
// tables of the registry at --registry, and prints
// "moend-router listening on HOST:PORT" once it accepts calls (port 0 picks a
// free port). With --metrics, serves Prometheus metrics at
// http://ADDR/metrics. SIGTERM or SIGINT ends watch streams with UNAVAILABLE
// (clients reconnect elsewhere) and shuts down gracefully.
//
// Security: --tls-cert/--tls-key[/--tls-client-ca] secure the router's own
// port; --tls-ca[/--tls-client-cert/--tls-client-key] its connection to the
// registry. --auth-token-file is the deployment's one bearer token: sent to
// the registry on every call, and required from clients of the router only
// with --auth-reads (the router has no mutating calls).
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
#include "prometheus/registry.h"
#include "services/common/process.h"
#include "services/common/security.h"
#include "services/registry/registry_client.h"
#include "services/router/router.h"
#include "services/router/router_service.h"
#include "services/router/table_source.h"

namespace {

constexpr char kUsage[] =
    "usage: moend-router --registry HOST:PORT --listen HOST:PORT [--metrics HOST:PORT]\n"
    "                    [--plan-cache-entries N] [--watch-poll-ms N] [--max-watch-streams N]\n"
    "  --registry HOST:PORT      the registry to read tables from (required)\n"
    "  --listen HOST:PORT        gRPC address; port 0 picks a free port (default 127.0.0.1:7002)\n"
    "  --metrics HOST:PORT       serve Prometheus /metrics there (default: off)\n"
    "  --plan-cache-entries N    plans kept in the LRU cache (default 4096)\n"
    "  --watch-poll-ms N         long-poll timeout on the registry's change feed (default 2000)\n"
    "  --max-watch-streams N     WatchPlans streams open at once; more get RESOURCE_EXHAUSTED\n"
    "                            (default 20000)\n"
    "  --tls-cert FILE           PEM server certificate chain: serve TLS only (default plaintext)\n"
    "  --tls-key FILE            PEM private key of --tls-cert\n"
    "  --tls-client-ca FILE      require client certificates signed by this PEM CA\n"
    "  --tls-ca FILE             connect to the registry with TLS, verified by this PEM CA\n"
    "  --tls-client-cert FILE    PEM client certificate for the registry (with --tls-client-key)\n"
    "  --tls-client-key FILE     PEM private key of --tls-client-cert\n"
    "  --auth-token-file FILE    bearer token sent to the registry (and required from\n"
    "                            clients with --auth-reads)\n"
    "  --auth-reads              require the token on SolvePlan and WatchPlans too\n";

struct Flags {
  std::string registry;
  std::string listen = "127.0.0.1:7002";
  std::string metrics;
  int64_t plan_cache_entries = 4096;
  int64_t watch_poll_ms = 2000;
  int64_t max_watch_streams = 20000;
  moend::rpc::ServerSecurity server_security;
  moend::rpc::ClientSecurity registry_security;
};

bool ParsePositive(const std::string& flag, const std::string& value, int64_t* out) {
  if (!absl::SimpleAtoi(value, out) || *out <= 0) {
    std::cerr << "moend-router: " << flag << " must be a positive integer, got '" << value
              << "'\n";
    return false;
  }
  return true;
}

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
      flags->server_security.token_for_reads = true;
      continue;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::cerr << "moend-router: " << arg << " needs a value\n" << kUsage;
      return false;
    }
    if (arg == "--registry") {
      flags->registry = value;
    } else if (arg == "--listen") {
      flags->listen = value;
    } else if (arg == "--metrics") {
      flags->metrics = value;
    } else if (arg == "--tls-cert") {
      flags->server_security.tls_cert_file = value;
    } else if (arg == "--tls-key") {
      flags->server_security.tls_key_file = value;
    } else if (arg == "--tls-client-ca") {
      flags->server_security.tls_client_ca_file = value;
    } else if (arg == "--tls-ca") {
      flags->registry_security.tls_ca_file = value;
    } else if (arg == "--tls-client-cert") {
      flags->registry_security.tls_client_cert_file = value;
    } else if (arg == "--tls-client-key") {
      flags->registry_security.tls_client_key_file = value;
    } else if (arg == "--auth-token-file") {
      flags->server_security.auth_token_file = value;
      flags->registry_security.auth_token_file = value;
    } else if (arg == "--plan-cache-entries") {
      if (!ParsePositive(arg, value, &flags->plan_cache_entries)) return false;
    } else if (arg == "--watch-poll-ms") {
      if (!ParsePositive(arg, value, &flags->watch_poll_ms)) return false;
    } else if (arg == "--max-watch-streams") {
      if (!ParsePositive(arg, value, &flags->max_watch_streams)) return false;
    } else {
      std::cerr << "moend-router: unknown flag " << arg << "\n" << kUsage;
      return false;
    }
  }
  if (flags->registry.empty()) {
    std::cerr << "moend-router: --registry is required\n" << kUsage;
    return false;
  }
  return true;
}

// Self-pipe: the handler (on whichever thread the signal lands) writes the
// signal number; main reads it.

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  if (!ParseFlags(argc, argv, &flags)) return 2;

  auto shutdown = moend::rpc::ShutdownSignal::Install();
  if (!shutdown.ok()) {
    std::cerr << "moend-router: " << shutdown.status() << "\n";
    return 1;
  }

  auto metrics = std::make_shared<prometheus::Registry>();
  moend::rpc::MetricsEndpoint metrics_endpoint;
  if (!flags.metrics.empty()) {
    auto endpoint = moend::rpc::ServeMetrics(flags.metrics, metrics);
    if (!endpoint.ok()) {
      std::cerr << "moend-router: " << endpoint.status().message() << "\n";
      return 1;
    }
    metrics_endpoint = *std::move(endpoint);
  }

  // The registry may start after the router: do not wait for it here; the
  // first request for a model (and the watchers, with backoff) connect.
  auto client = moend::registry::RegistryClient::Connect(
      {.target = flags.registry, .rpc_timeout = absl::Seconds(10),
       .connect_timeout = absl::ZeroDuration(), .security = flags.registry_security});
  if (!client.ok()) {
    std::cerr << "moend-router: " << client.status() << "\n";
    return 1;
  }
  moend::router::RegistryTableSource source(client->get());
  auto router = moend::router::Router::Create(
      {.tables = &source, .metrics = metrics.get(),
       .plan_cache_entries = static_cast<size_t>(flags.plan_cache_entries),
       .watch_poll = absl::Milliseconds(flags.watch_poll_ms)});
  if (!router.ok()) {
    std::cerr << "moend-router: " << router.status() << "\n";
    return 1;
  }
  auto server =
      moend::router::RouterServer::Start(router->get(),
                                         {.listen_address = flags.listen,
                                          .max_watch_streams = flags.max_watch_streams,
                                          .security = flags.server_security});
  if (!server.ok()) {
    std::cerr << "moend-router: " << server.status() << "\n";
    return 1;
  }
  std::cout << "moend-router listening on " << (*server)->address() << std::endl;
  if (metrics_endpoint.server) {
    std::cout << "moend-router metrics on http://" << metrics_endpoint.address << "/metrics" << std::endl;
  }

  const int sig = (*shutdown)->Wait();
  std::cout << "moend-router: signal " << sig << ", shutting down"
            << std::endl;
  (*server)->Shutdown(absl::Seconds(5));
  (*router)->Shutdown();
  return 0;
}

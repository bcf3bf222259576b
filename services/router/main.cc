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
#include <initializer_list>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/time/time.h"
#include "services/common/process.h"
#include "core/flags.h"
#include "services/common/security.h"
#include "services/common/security_flags.h"
#include "services/registry/registry_client.h"
#include "services/router/router.h"
#include "services/router/router_service.h"
#include "services/router/registry_table_source.h"

namespace {

constexpr char kUsage[] =
    "usage: moend-router --registry HOST:PORT --listen HOST:PORT [--metrics HOST:PORT]\n"
    "                    [--plan-cache-entries N] [--watch-poll-ms N] [--max-watch-streams N]\n"
    "                    [--solve-threads N]\n"
    "  --registry HOST:PORT      the registry to read tables from (required)\n"
    "  --listen HOST:PORT        gRPC address; port 0 picks a free port (default 127.0.0.1:7002)\n"
    "  --metrics HOST:PORT       serve Prometheus /metrics there (default: off)\n"
    "  --plan-cache-entries N    plans kept in the LRU cache (default 4096)\n"
    "  --watch-poll-ms N         long-poll timeout on the registry's change feed (default 2000)\n"
    "  --max-watch-streams N     WatchPlans streams open at once; more get RESOURCE_EXHAUSTED\n"
    "                            (default 20000)\n"
    "  --solve-threads N         threads that fetch tables and solve on a plan-cache miss, off\n"
    "                            the gRPC threads (default 4)\n"
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
  int64_t solve_threads = 4;
  moend::rpc::ServerSecurity server_security;
  moend::rpc::ClientSecurity registry_security;
};

// Fills *flags; nullopt to go on, else main's exit code (2: a usage error,
// printed; 0: --help, the usage printed).
std::optional<int> ParseFlags(int argc, char** argv, Flags* flags) {
  int exit_code = 0;
  auto args = moend::ParseCommandLine(
      "moend-router", kUsage, argc, argv,
      moend::rpc::WithFlags(moend::rpc::WithFlags({"registry", "listen", "metrics",
                                                   "plan-cache-entries", "watch-poll-ms",
                                                   "max-watch-streams", "solve-threads"},
                                                  moend::rpc::kServerSecurityFlags),
                            moend::rpc::kClientSecurityFlags),
      {moend::rpc::kAuthReadsSwitch}, &exit_code);
  if (!args) return exit_code;
  flags->registry = args->Optional("registry").value_or("");
  flags->listen = args->Optional("listen").value_or(flags->listen);
  flags->metrics = args->Optional("metrics").value_or("");
  // --auth-token-file is the deployment's one token: required from clients
  // and sent to the registry.
  flags->server_security = moend::rpc::ServerSecurityFromArgs(*args);
  flags->registry_security = moend::rpc::ClientSecurityFromArgs(*args);
  for (const auto& [name, out] : std::initializer_list<std::pair<const char*, int64_t*>>{
           {"plan-cache-entries", &flags->plan_cache_entries},
           {"watch-poll-ms", &flags->watch_poll_ms},
           {"max-watch-streams", &flags->max_watch_streams},
           {"solve-threads", &flags->solve_threads}}) {
    absl::StatusOr<int64_t> v =
        args->IntInRange(name, *out, 1, out == &flags->solve_threads ? 1024 : 1 << 30);
    if (!v.ok()) {
      std::cerr << "moend-router: " << v.status().message() << "\n";
      return 2;
    }
    *out = *v;
  }
  if (flags->registry.empty()) {
    std::cerr << "moend-router: --registry is required\n" << kUsage;
    return 2;
  }
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  constexpr char kProgram[] = "moend-router";
  Flags flags;
  if (std::optional<int> exit_code = ParseFlags(argc, argv, &flags)) return *exit_code;
  auto process = moend::rpc::ServerMain::Start(kProgram, flags.metrics);
  if (!process.ok()) return moend::rpc::ExitFailure(kProgram, process.status());

  // The registry may start after the router: do not wait for it here; the
  // first request for a model (and the watchers, with backoff) connect.
  auto client = moend::registry::RegistryClient::Connect(
      {.target = flags.registry, .rpc_timeout = absl::Seconds(10),
       .connect_timeout = absl::ZeroDuration(), .security = flags.registry_security});
  if (!client.ok()) return moend::rpc::ExitFailure(kProgram, client.status());
  moend::router::RegistryTableSource source(client->get());
  auto router = moend::router::Router::Create(
      {.tables = &source, .metrics = (*process)->metrics().get(),
       .plan_cache_entries = static_cast<size_t>(flags.plan_cache_entries),
       .watch_poll = absl::Milliseconds(flags.watch_poll_ms),
       .solve_threads = static_cast<int>(flags.solve_threads)});
  if (!router.ok()) return moend::rpc::ExitFailure(kProgram, router.status());
  auto server =
      moend::router::RouterServer::Start(router->get(),
                                         {.listen_address = flags.listen,
                                          .max_watch_streams = flags.max_watch_streams,
                                          .security = flags.server_security});
  if (!server.ok()) return moend::rpc::ExitFailure(kProgram, server.status());

  moend::rpc::MemoryTrimmer trimmer;  // refused large requests do not stay resident
  (*process)->ServeUntilSignal((*server)->address(), [s = server->get()] { return s->Serving(); });
  (*server)->Shutdown(absl::Seconds(5));
  (*router)->Shutdown();
  return 0;
}

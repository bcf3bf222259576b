// moend-registry --db DIR --listen ADDR [--metrics ADDR] [--lease-seconds N]
//                [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
//                [--auth-token-file FILE [--auth-reads]] [--bind-worker-ids]
//
// Serves the registry over gRPC on ADDR (port 0 picks a free port) and prints
// "moend-registry listening on HOST:PORT" once it accepts calls. With
// --metrics, serves Prometheus metrics at http://ADDR/metrics. SIGTERM or
// SIGINT shuts down gracefully.
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
    "  --max-threads N     server threads, one per call in progress; calls beyond get\n"
    "                      RESOURCE_EXHAUSTED (default 512)\n"
    "  --max-watch-streams N  version watch streams open at once (default 128)\n"
    "  --tls-cert FILE     PEM server certificate chain: serve TLS only (default: plaintext)\n"
    "  --tls-key FILE      PEM private key of --tls-cert\n"
    "  --tls-client-ca FILE  require client certificates signed by this PEM CA (mutual TLS)\n"
    "  --auth-token-file FILE  mutating calls (RegisterModel, SubmitJob, LeaseShard,\n"
    "                      Heartbeat, ReportShard, PublishTable) need\n"
    "                      'authorization: Bearer <token in FILE>' (default: no token)\n"
    "  --auth-reads        require the token on read calls too (health and reflection\n"
    "                      stay open)\n"
    "  --bind-worker-ids   with --tls-client-ca: LeaseShard, Heartbeat and ReportShard\n"
    "                      may only name the worker id that the caller's certificate\n"
    "                      carries (subject CN or a DNS alternative name)\n";

struct Flags {
  std::string db;
  std::string listen = "127.0.0.1:7001";
  std::string metrics;
  int64_t lease_seconds = 60;
  int64_t max_threads = 512;
  int64_t max_watch_streams = 128;
  moend::rpc::ServerSecurity security;
};

// Fills *flags; nullopt to go on, else main's exit code (2: a usage error,
// printed; 0: --help, the usage printed).
std::optional<int> ParseFlags(int argc, char** argv, Flags* flags) {
  int exit_code = 0;
  auto args = moend::ParseCommandLine(
      "moend-registry", kUsage, argc, argv,
      moend::rpc::WithFlags({"db", "listen", "metrics", "lease-seconds", "max-threads",
                             "max-watch-streams"},
                            moend::rpc::kServerSecurityFlags),
      {moend::rpc::kAuthReadsSwitch, "bind-worker-ids"}, &exit_code);
  if (!args) return exit_code;
  flags->db = args->Optional("db").value_or("");
  flags->listen = args->Optional("listen").value_or(flags->listen);
  flags->metrics = args->Optional("metrics").value_or("");
  flags->security = moend::rpc::ServerSecurityFromArgs(*args);
  flags->security.bind_worker_ids = args->Has("bind-worker-ids");
  for (const auto& [name, out] : std::initializer_list<std::pair<const char*, int64_t*>>{
           {"lease-seconds", &flags->lease_seconds},
           {"max-threads", &flags->max_threads},
           {"max-watch-streams", &flags->max_watch_streams}}) {
    absl::StatusOr<int64_t> v = args->IntInRange(name, *out, 1, 1 << 20);
    if (!v.ok()) {
      std::cerr << "moend-registry: " << v.status().message() << "\n";
      return 2;
    }
    *out = *v;
  }
  if (flags->db.empty()) {
    std::cerr << "moend-registry: --db is required\n" << kUsage;
    return 2;
  }
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  constexpr char kProgram[] = "moend-registry";
  Flags flags;
  if (std::optional<int> exit_code = ParseFlags(argc, argv, &flags)) return *exit_code;
  auto process = moend::rpc::ServerMain::Start(kProgram, flags.metrics);
  if (!process.ok()) return moend::rpc::ExitFailure(kProgram, process.status());

  auto store = moend::storage::Store::Open({.path = flags.db});
  if (!store.ok()) return moend::rpc::ExitFailure(kProgram, store.status());
  moend::registry::RegistryOptions options;
  options.lease_duration = absl::Seconds(flags.lease_seconds);
  options.metrics = (*process)->metrics().get();
  auto registry = moend::registry::Registry::Open(std::move(store).value(), options);
  if (!registry.ok()) return moend::rpc::ExitFailure(kProgram, registry.status());
  auto server = moend::registry::RegistryServer::Start(
      registry->get(), {.listen_address = flags.listen,
                        .max_threads = static_cast<int>(flags.max_threads),
                        .max_watch_streams = flags.max_watch_streams,
                        .security = flags.security});
  if (!server.ok()) return moend::rpc::ExitFailure(kProgram, server.status());
  if (!flags.security.auth_token_file.empty() && !flags.security.tls()) {
    std::cerr << "moend-registry: warning: the auth token travels in clear without TLS "
                 "(--tls-cert/--tls-key)\n";
  }
  std::cout << "moend-registry: " << (flags.security.tls() ? "TLS" : "plaintext")
            << (flags.security.tls_client_ca_file.empty() ? "" : ", client certificates required")
            << (flags.security.bind_worker_ids ? ", worker ids bound to certificates" : "")
            << (flags.security.auth_token_file.empty() ? ", no auth token"
                                                       : ", auth token required")
            << std::endl;

  moend::rpc::MemoryTrimmer trimmer;  // refused large requests do not stay resident
  (*process)->ServeUntilSignal((*server)->address(), [s = server->get()] { return s->Serving(); });
  (*server)->Shutdown(absl::Seconds(5));
  (*registry)->Shutdown();
  return 0;
}

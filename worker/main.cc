// moend-worker --registry ADDR [--id NAME] [--models DIR] [--data-dir DIR]
//              [--threads N] [--metrics ADDR] [--exit-when-idle]
//              [--tls-ca FILE [--tls-client-cert FILE --tls-client-key FILE]]
//              [--auth-token-file FILE]
//
// One calibration worker process (one per GPU, or a few on a CPU machine):
// leases shards from the registry, calibrates them and reports back.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/flags.h"
#include "prometheus/registry.h"
#include "services/common/process.h"
#include "services/common/security_flags.h"
#include "services/registry/registry_client.h"
#include "worker/fleet_worker.h"

namespace {

constexpr char kUsage[] =
    "usage: moend-worker --registry HOST:PORT [--id NAME] [--models DIR] [--data-dir DIR]\n"
    "                    [--threads N] [--metrics HOST:PORT] [--exit-when-idle]\n"
    "  --registry     gRPC address of moend-registry (required)\n"
    "  --id           worker id (default: the CN of --tls-client-cert, else hostname-pid)\n"
    "  --models       folder holding model folders by registered name (default: models)\n"
    "  --data-dir     relative dataset paths of jobs resolve here (default: .)\n"
    "  --threads      CPU threads for forward and calibration (default: all cores)\n"
    "  --metrics      serve Prometheus /metrics at this address (default: off)\n"
    "  --exit-when-idle  exit once no shard is free instead of waiting for work\n"
    "  --tls-ca       connect to the registry with TLS, verified by this PEM CA\n"
    "                 (default: plaintext)\n"
    "  --tls-client-cert, --tls-client-key  PEM client certificate and key for a\n"
    "                 registry that requires them\n"
    "  --auth-token-file  bearer token for the registry's mutating calls (lease,\n"
    "                 heartbeat, report)\n";

moend::worker::FleetWorker* g_worker = nullptr;

void OnSignal(int) {
  if (g_worker) g_worker->Stop();
}

int Fail(const absl::Status& s) { return moend::rpc::ExitFailure("moend-worker", s); }

}  // namespace

int main(int argc, char** argv) {
  int exit_code = 0;
  auto args = moend::ParseCommandLine("moend-worker", kUsage, argc, argv,
                                      moend::rpc::WithFlags({"registry", "id", "models", "data-dir",
                                                             "threads", "metrics"},
                                                            moend::rpc::kClientSecurityFlags),
                                      {"exit-when-idle"}, &exit_code);
  if (!args) return exit_code;
  auto target = args->Required("registry");
  auto threads = args->Int("threads", 0);
  if (!target.ok()) return Fail(target.status());
  if (!threads.ok()) return Fail(threads.status());
  char host[256] = "worker";
  ::gethostname(host, sizeof(host) - 1);
  moend::worker::FleetWorkerOptions options;
  // Default id: the client certificate's CN where there is one (what a
  // registry with --bind-worker-ids accepts), else host-pid.
  if (auto id = args->Optional("id")) {
    options.worker_id = *id;
  } else if (auto cert = args->Optional("tls-client-cert")) {
    auto cn = moend::rpc::CertificateCommonName(*cert);
    if (!cn.ok()) return Fail(cn.status());
    options.worker_id = *cn;
  } else {
    options.worker_id = absl::StrCat(host, "-", ::getpid());
  }
  options.models_dir = args->Optional("models").value_or("models");
  options.data_dir = args->Optional("data-dir").value_or(".");
  options.threads = static_cast<int>(*threads);
  options.exit_when_idle = args->Has("exit-when-idle");

  auto metrics = std::make_shared<prometheus::Registry>();
  moend::rpc::MetricsEndpoint metrics_endpoint;
  if (auto addr = args->Optional("metrics")) {
    auto endpoint = moend::rpc::ServeMetrics(*addr, metrics);
    if (!endpoint.ok()) return Fail(endpoint.status());
    metrics_endpoint = *std::move(endpoint);
  }
  moend::registry::RegistryClientOptions client_options;
  client_options.target = *target;
  client_options.connect_timeout = absl::ZeroDuration();  // the loop retries
  client_options.security = moend::rpc::ClientSecurityFromArgs(*args);
  auto client = moend::registry::RegistryClient::Connect(client_options);
  if (!client.ok()) return Fail(client.status());

  moend::worker::FleetWorker worker(options, client->get(), metrics.get());
  g_worker = &worker;
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::fprintf(stderr, "moend-worker %s: serving registry %s\n", options.worker_id.c_str(),
               target->c_str());
  absl::Status s = worker.Run();
  if (!s.ok()) return Fail(s);
  return 0;
}

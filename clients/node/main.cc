// moend-node --model DIR --listen ADDR [--router ADDR (--ratio R | --budget-bytes B --context N)]
//            [--solver NAME] [--plan FILE] [--kv-pool-bytes B] [--max-running N]
//            [--prefill-rows-per-step N] [--shadow-rate P] [--shadow-tokens N]
//            [--metrics ADDR] [--threads N]
//
// The inference node: serves Generate and GenerateStream
// (proto/moend/v1/node.proto) on the model with compressed KV caches, following
// the router's plan for (model, budget, solver) or a fixed --plan, in a
// runtime::Engine (KV pool, continuous batching). Prints "moend-node
// listening on HOST:PORT".
// Serves the gRPC health service and reflection too.
//
// Security: --tls-cert/--tls-key[/--tls-client-ca] secure the node's port;
// --tls-ca[/--tls-client-cert/--tls-client-key] its connection to the router.
// --auth-token-file is the deployment's bearer token: sent to the router, and
// required on Generate (it changes no state but spends the node's compute).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "clients/node/inference_node.h"
#include "clients/node/node_service.h"
#include "core/flags.h"
#include "core/plan.h"
#include "grpcpp/grpcpp.h"
#include "prometheus/registry.h"
#include "services/common/process.h"
#include "services/common/security.h"
#include "services/common/security_flags.h"
#include "services/common/server_setup.h"

namespace {

constexpr char kUsage[] =
    "usage: moend-node --model DIR --listen HOST:PORT [--router HOST:PORT]\n"
    "                  [--ratio R | --budget-bytes B --context N] [--solver greedy]\n"
    "                  [--plan FILE] [--kv-pool-bytes B] [--max-running N]\n"
    "                  [--prefill-rows-per-step N] [--shadow-rate P] [--shadow-tokens N]\n"
    "                  [--metrics HOST:PORT] [--threads N]\n"
    "  --model     Hugging Face model folder (its name is the folder name)\n"
    "  --listen    gRPC address; port 0 picks a free port\n"
    "  --router    follow the router's plan for the budget (without it: full cache\n"
    "              unless a request carries a plan)\n"
    "  --ratio     budget as a compression ratio (default 8)\n"
    "  --budget-bytes, --context  budget as bytes at a context length\n"
    "  --solver    exact, greedy, 1d, 2d_uniform or 2d (default exact)\n"
    "  --plan      serve this plan (moendctl solve's JSON) when the router has none\n"
    "              yet or there is no router\n"
    "  --kv-pool-bytes  bytes all admitted sequences' KV caches may reserve\n"
    "              (default 1073741824); requests wait for room, one that can never\n"
    "              fit is refused\n"
    "  --max-running  sequences decoded together at most (default 256)\n"
    "  --prefill-rows-per-step N  prefill work between two decode steps, in rows\n"
    "              (token rows of a layer phase; default 4096): bounds how long a\n"
    "              new prompt delays the running sequences\n"
    "  --shadow-rate P  fraction of compressed requests whose first --shadow-tokens\n"
    "              (default 16) tokens are also decoded with the full cache, to export\n"
    "              measured agreement and KL (moend_node_shadow_*); default 0\n"
    "  --metrics   serve Prometheus /metrics there\n"
    "  --tls-cert FILE, --tls-key FILE  serve TLS only with this PEM certificate and key\n"
    "  --tls-client-ca FILE  require client certificates signed by this PEM CA\n"
    "  --tls-ca FILE         connect to the router with TLS, verified by this PEM CA\n"
    "  --tls-client-cert FILE, --tls-client-key FILE  client certificate for the router\n"
    "  --auth-token-file FILE  bearer token: required on Generate, sent to the router\n";

constexpr char kProgram[] = "moend-node";

int Fail(const absl::Status& s) { return moend::rpc::ExitFailure(kProgram, s); }

}  // namespace

int main(int argc, char** argv) {
  int exit_code = 0;
  auto args = moend::ParseCommandLine(
      "moend-node", kUsage, argc, argv,
      moend::rpc::WithFlags(
          moend::rpc::WithFlags({"model", "listen", "router", "ratio", "budget-bytes", "context",
                                 "solver", "metrics", "threads", "plan", "kv-pool-bytes",
                                 "max-running", "prefill-rows-per-step", "shadow-rate",
                                 "shadow-tokens"},
                                moend::rpc::kServerSecurityFlags),
          moend::rpc::kClientSecurityFlags),
      {}, &exit_code);
  if (!args) return exit_code;
  auto model_dir = args->Required("model");
  auto listen = args->Required("listen");
  auto ratio = args->Double("ratio", 8.0);
  auto bytes = args->Int("budget-bytes", 0);
  auto context = args->Int("context", 0);
  auto threads = args->Int("threads", 0);
  auto pool = args->IntInRange("kv-pool-bytes", int64_t{1} << 30, 1, int64_t{1} << 50);
  auto max_running = args->IntInRange("max-running", 256, 1, 1 << 20);
  auto prefill_rows = args->IntInRange("prefill-rows-per-step", 4096, 1, int64_t{1} << 40);
  auto shadow_rate = args->Double("shadow-rate", 0.0);
  auto shadow_tokens = args->IntInRange("shadow-tokens", 16, 2, 4096);
  for (const absl::Status& s : {model_dir.status(), listen.status(), ratio.status(),
                                bytes.status(), context.status(), threads.status(),
                                pool.status(), max_running.status(), prefill_rows.status(),
                                shadow_rate.status(), shadow_tokens.status()}) {
    if (!s.ok()) return Fail(s);
  }
  const moend::rpc::ServerSecurity server_security = moend::rpc::ServerSecurityFromArgs(*args);
  auto security = moend::rpc::LoadServerSecurity(server_security);
  if (!security.ok()) return Fail(security.status());
  const moend::rpc::ClientSecurity router_security = moend::rpc::ClientSecurityFromArgs(*args);

  auto model = moend::Model::Load(*model_dir, moend::ModelOptions{static_cast<int>(*threads)});
  if (!model.ok()) return Fail(model.status());

  auto process = moend::rpc::ServerMain::Start(kProgram, args->Optional("metrics").value_or(""));
  if (!process.ok()) return Fail(process.status());

  std::unique_ptr<moend::plan_client::PlanClient> plans;
  std::unique_ptr<moend::plan_client::PlanWatch> watch;
  if (auto router = args->Optional("router")) {
    auto client = moend::plan_client::PlanClient::Connect(
        {.target = *router, .security = router_security});
    if (!client.ok()) return Fail(client.status());
    plans = *std::move(client);
    const moend::Budget budget = *bytes > 0 ? moend::Budget::Bytes(*bytes, *context)
                                            : moend::Budget::Ratio(*ratio, *context);
    auto w = plans->Watch((*model)->name(), budget, args->Optional("solver").value_or("exact"));
    if (!w.ok()) return Fail(w.status());
    watch = *std::move(w);
  }
  moend::node::InferenceNodeOptions options;
  options.engine.kv_pool_bytes = *pool;
  options.engine.max_running = *max_running;
  options.engine.prefill_rows_per_step = *prefill_rows;
  options.shadow_rate = *shadow_rate;
  options.shadow_tokens = *shadow_tokens;
  if (auto plan_file = args->Optional("plan")) {
    auto plan = moend::ReadPlan(*plan_file);
    if (!plan.ok()) return Fail(plan.status());
    options.fixed_plan = plan->RuntimeTuples();  // per layer, or per (layer, KV head)
  }
  auto node = moend::node::InferenceNode::Create(*std::move(model), std::move(watch), options,
                                                 (*process)->metrics().get());
  if (!node.ok()) return Fail(node.status());
  moend::node::NodeService service(node->get(), security->authorizer);
  constexpr char kServiceName[] = "moend.v1.InferenceNode";
  auto started = moend::rpc::StartServer({.listen_address = *listen,
                                          .credentials = security->credentials,
                                          .tls = security->tls,
                                          .service = &service,
                                          .service_name = kServiceName});
  if (!started.ok()) return Fail(started.status());
  std::unique_ptr<grpc::Server> server = std::move(started->server);
  (*process)->ServeUntilSignal(started->address,
                               [s = server.get(), name = std::string(kServiceName)] {
                                 return moend::rpc::ServingInProcess(s, name);
                               });
  moend::rpc::SetServing(server.get(), {kServiceName}, false);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return 0;
}

// moendctl plan / generate: ask a running router for a plan, a running node
// for text.
#include <cstdio>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "clients/moendctl/client_flags.h"
#include "clients/moendctl/commands.h"
#include "clients/moendctl/output.h"
#include "core/file_util.h"
#include "core/flags.h"
#include "nlohmann/json.hpp"

#ifdef MOEND_WITH_REGISTRY
#include "grpcpp/grpcpp.h"
#include "moend/v1/node.grpc.pb.h"
#include "moend/v1/router.grpc.pb.h"
#include "services/common/security.h"
#include "services/router/plan_convert.h"
#endif

namespace moend::ctl {
namespace {

constexpr char kPlanUsage[] =
    "usage: moendctl plan --router HOST:PORT --model NAME (--ratio R | --budget-bytes B\n"
    "                     --context N) [--solver exact] [--units auto|layer|head]\n"
    "                     [--out plan.json] [--json]\n"
    "Asks the router for the plan of (model, budget, solver) solved over the\n"
    "model's latest calibration; prints it as a table (or JSON with --json).\n"
    "--units: what takes one tuple; auto (default) solves per KV head when the\n"
    "table has per-head rows and the solver is greedy or exact.\n";

constexpr char kGenerateUsage[] =
    "usage: moendctl generate --node HOST:PORT (--prompt TEXT | --input FILE)\n"
    "                         [--max-new-tokens 32] [--full-cache] [--stream] [--json]\n"
    "                         [--temperature T --top-k K --top-p P --seed S] [--stop TEXT]\n"
    "                         [--deadline-seconds 300]\n"
    "Generates on a moend-node with its current compressed-cache plan (or the\n"
    "full cache), greedily unless --temperature > 0, and prints the text and the\n"
    "cache it used; --stream prints the text as it is generated.\n";

absl::Status GrpcError(const std::string& what, int code, const std::string& message) {
  return absl::Status(static_cast<absl::StatusCode>(code), absl::StrCat(what, ": ", message));
}

#ifdef MOEND_WITH_REGISTRY
absl::StatusOr<std::shared_ptr<grpc::Channel>> Connect(const Args& args,
                                                       const std::string& target) {
  return rpc::CreateChannel(target, ClientSecurityFromFlags(args));
}
#endif

}  // namespace

int RunPlan(int argc, char** argv) {
  auto args = Args::Parse(
      argc, argv,
      WithClientSecurityFlags({"router", "model", "ratio", "budget-bytes", "context", "solver", "units",
                               "out"}),
      {"json"});
  if (!args.ok()) return FailWith("plan", args.status());
  if (args->help()) {
    std::printf("%s%s", kPlanUsage, kClientSecurityUsage);
    return kExitOk;
  }
#ifndef MOEND_WITH_REGISTRY
  return FailWith("plan", absl::UnimplementedError("this moendctl was built without gRPC"));
#else
  auto router = args->Required("router");
  auto model = args->Required("model");
  auto ratio = args->Double("ratio", 0);
  auto bytes = args->Int("budget-bytes", 0);
  auto context = args->Int("context", 0);
  for (const absl::Status& s :
       {router.status(), model.status(), ratio.status(), bytes.status(), context.status()}) {
    if (!s.ok()) return FailWith("plan", s);
  }
  if ((*ratio > 0) == (*bytes > 0)) {
    return FailWith("plan", absl::InvalidArgumentError("give exactly one of --ratio or --budget-bytes"));
  }
  const Budget budget = *bytes > 0 ? Budget::Bytes(*bytes, *context) : Budget::Ratio(*ratio, *context);
  if (absl::Status s = budget.Validate(); !s.ok()) return FailWith("plan", s);
  auto channel = Connect(*args, *router);
  if (!channel.ok()) return FailWith("plan", channel.status());
  auto stub = v1::Router::NewStub(*channel);
  v1::SolvePlanRequest req;
  req.set_model(*model);
  *req.mutable_budget() = router::ToProto(budget);
  req.set_solver(args->Optional("solver").value_or("exact"));
  req.set_units(args->Optional("units").value_or(""));
  v1::Plan resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status s = stub->SolvePlan(&ctx, req, &resp);
  if (!s.ok()) return FailWith("plan", GrpcError(*router, s.error_code(), s.error_message()));
  auto plan = router::PlanFromProto(resp);
  if (!plan.ok()) return FailWith("plan", plan.status());
  if (auto out = args->Optional("out")) {
    if (absl::Status w = WritePlan(plan->plan, *out); !w.ok()) return FailWith("plan", w);
  }
  if (args->Has("json")) {
    std::printf("%s", PlanToJson(plan->plan).c_str());
  } else {
    std::printf("plan version %llu (the calibration table's version)\n",
                static_cast<unsigned long long>(plan->table_version));
    PrintPlan(plan->plan);
  }
  return kExitOk;
#endif
}

int RunGenerate(int argc, char** argv) {
  auto args = Args::Parse(argc, argv,
                          WithClientSecurityFlags({"node", "prompt", "input", "max-new-tokens",
                                                   "temperature", "top-k", "top-p", "seed",
                                                   "stop", "deadline-seconds"}),
                          {"full-cache", "json", "stream"});
  if (!args.ok()) return FailWith("generate", args.status());
  if (args->help()) {
    std::printf("%s%s", kGenerateUsage, kClientSecurityUsage);
    return kExitOk;
  }
#ifndef MOEND_WITH_REGISTRY
  return FailWith("generate", absl::UnimplementedError("this moendctl was built without gRPC"));
#else
  auto node = args->Required("node");
  auto max_new = args->Int("max-new-tokens", 32);
  auto temperature = args->Double("temperature", 0.0);
  auto top_k = args->Int("top-k", 0);
  auto top_p = args->Double("top-p", 1.0);
  auto seed = args->Int("seed", 0);
  auto deadline = args->IntInRange("deadline-seconds", 300, 1, 86400);
  for (const absl::Status& st : {node.status(), max_new.status(), temperature.status(),
                                 top_k.status(), top_p.status(), seed.status(), deadline.status()}) {
    if (!st.ok()) return FailWith("generate", st);
  }
  std::string prompt;
  if (auto text = args->Optional("prompt")) {
    prompt = *text;
  } else if (auto file = args->Optional("input")) {
    auto bytes = ReadFile(*file);
    if (!bytes.ok()) return FailWith("generate", bytes.status());
    prompt = *std::move(bytes);
  } else {
    return FailWith("generate", absl::InvalidArgumentError("give --prompt or --input"));
  }
  auto channel = Connect(*args, *node);
  if (!channel.ok()) return FailWith("generate", channel.status());
  auto stub = v1::InferenceNode::NewStub(*channel);
  v1::GenerateRequest req;
  req.set_prompt(prompt);
  req.set_max_new_tokens(static_cast<int32_t>(*max_new));
  req.set_full_cache(args->Has("full-cache"));
  req.mutable_sampling()->set_temperature(*temperature);
  req.mutable_sampling()->set_top_k(static_cast<int32_t>(*top_k));
  req.mutable_sampling()->set_top_p(*top_p);
  req.mutable_sampling()->set_seed(static_cast<uint64_t>(*seed));
  if (auto stop = args->Optional("stop")) req.add_stop(*stop);
  v1::GenerateResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(*deadline));
  const bool stream = args->Has("stream");
  grpc::Status s;
  if (stream) {
    auto reader = stub->GenerateStream(&ctx, req);
    v1::GenerateChunk chunk;
    while (reader->Read(&chunk)) {
      if (chunk.has_done()) {
        resp = chunk.done();
      } else if (!args->Has("json")) {
        std::fwrite(chunk.text().data(), 1, chunk.text().size(), stdout);
        std::fflush(stdout);
      }
    }
    s = reader->Finish();
  } else {
    s = stub->Generate(&ctx, req, &resp);
  }
  if (!s.ok()) return FailWith("generate", GrpcError(*node, s.error_code(), s.error_message()));
  const double ratio = resp.kv_cache_bytes() > 0 ? static_cast<double>(resp.full_cache_bytes()) /
                                                       static_cast<double>(resp.kv_cache_bytes())
                                                 : 0.0;
  if (args->Has("json")) {
    nlohmann::json j = {{"text", resp.text()},
                        {"prompt_tokens", resp.prompt_tokens()},
                        {"generated_tokens", resp.generated_tokens()},
                        {"plan_version", resp.plan_version()},
                        {"kv_cache_bytes", resp.kv_cache_bytes()},
                        {"full_cache_bytes", resp.full_cache_bytes()},
                        {"prefill_seconds", resp.prefill_seconds()},
                        {"decode_seconds", resp.decode_seconds()},
                        {"finish_reason", resp.finish_reason()},
                        {"reserved_bytes", resp.reserved_bytes()},
                        {"queue_seconds", resp.queue_seconds()}};
    std::printf("%s\n", j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    if (!stream) std::printf("%s", resp.text().c_str());
    std::printf("\n--\n%lld prompt + %lld generated tokens, plan version %llu, KV cache %lld bytes "
                "(fp16 would be %lld: %.2fx smaller), prefill %.2f s, decode %.2f s\n",
                static_cast<long long>(resp.prompt_tokens()),
                static_cast<long long>(resp.generated_tokens()),
                static_cast<unsigned long long>(resp.plan_version()),
                static_cast<long long>(resp.kv_cache_bytes()),
                static_cast<long long>(resp.full_cache_bytes()), ratio, resp.prefill_seconds(),
                resp.decode_seconds());
  }
  return kExitOk;
#endif
}

}  // namespace moend::ctl

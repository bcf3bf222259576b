// moendctl eval: retrieval accuracy and held-out bits per byte of plans, with
// the real compressed cache (DESIGN.md section 3).
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "runtime/evaluation.h"
#include "clients/moendctl/commands.h"
#include "clients/moendctl/output.h"
#include "clients/moendctl/progress.h"
#include "core/file_util.h"
#include "core/flags.h"
#include "runtime/model.h"
#include "core/plan.h"
#include "nlohmann/json.hpp"

namespace moend::ctl {
namespace {

int Fail(const absl::Status& s) { return FailWith("eval", s); }

constexpr char kUsage[] =
    "usage: moendctl eval --model DIR --plan PLAN[,PLAN...] --retrieval FILE --heldout FILE\n"
    "                     (--out result.json | --out-dir DIR) [--limit N] [--bpb-windows 8]\n"
    "                     [--threads N] [--json]\n"
    "Evaluates each plan (a plan.json from `moendctl solve`, or `full` for the\n"
    "uncompressed fp16 cache) with real compression: retrieval accuracy on FILE's\n"
    "prompts (prefill the context, compress, decode the answer) and bits per byte\n"
    "of held-out text (windows of 4096 bytes compressed after 3072). Plans share\n"
    "each prefill. One plan writes --out; several write DIR/<plan name>.json.\n"
    "result.json: {\"retrieval\": {\"correct\", \"total\"}, \"bpb\", \"ratio\", ...}\n";

nlohmann::json ToJson(const std::string& plan, const runtime::EvalResult& r) {
  return {{"plan", plan},
          {"retrieval", {{"correct", r.retrieval_correct}, {"total", r.retrieval_total}}},
          {"bpb", r.bpb},
          {"bpb_bytes", r.bpb_bytes},
          {"ratio", r.ratio},
          {"bpb_ratio", r.bpb_ratio}};
}

}  // namespace

int RunEval(int argc, char** argv) {
  auto args = Args::Parse(argc, argv,
                          {"model", "plan", "retrieval", "heldout", "out", "out-dir", "limit",
                           "bpb-windows", "threads"},
                          {"json"});
  if (!args.ok()) return Fail(args.status());
  if (args->help()) {
    std::printf("%s", kUsage);
    return kExitOk;
  }
  auto model_dir = args->Required("model");
  auto plan_list = args->Required("plan");
  auto retrieval_path = args->Required("retrieval");
  auto heldout_path = args->Required("heldout");
  auto limit = args->Int("limit", 0);
  auto windows = args->Int("bpb-windows", 8);
  auto threads = args->Int("threads", 0);
  for (const absl::Status& s : {model_dir.status(), plan_list.status(), retrieval_path.status(),
                                heldout_path.status(), limit.status(), windows.status(),
                                threads.status()}) {
    if (!s.ok()) return Fail(s);
  }
  const std::vector<std::string> names = absl::StrSplit(*plan_list, ',');
  if (names.size() > 1 && !args->Has("out-dir")) {
    return Fail(absl::InvalidArgumentError("several plans need --out-dir"));
  }
  if (names.size() == 1 && !args->Has("out") && !args->Has("out-dir")) {
    return Fail(absl::InvalidArgumentError("missing --out (or --out-dir)"));
  }
  if (*limit < 0 || *windows < 0) {
    return Fail(absl::InvalidArgumentError("--limit and --bpb-windows must be >= 0"));
  }
  if (auto dir = args->Optional("out-dir")) {
    std::error_code ec;
    std::filesystem::create_directories(*dir, ec);
    if (ec) {
      return Fail(absl::PermissionDeniedError(
          absl::StrCat("cannot create --out-dir ", *dir, ": ", ec.message())));
    }
  }
  auto model = Model::Load(*model_dir, ModelOptions{static_cast<int>(*threads)});
  if (!model.ok()) return Fail(model.status());
  const int64_t layers = (*model)->config().num_layers;
  std::vector<std::vector<CompressionTuple>> plans;
  for (const std::string& name : names) {
    if (name == "full") {
      plans.emplace_back(static_cast<size_t>(layers), CompressionTuple{1.0, 16, 16});
      continue;
    }
    auto plan = ReadPlan(name);
    if (!plan.ok()) return Fail(plan.status());
    if (static_cast<int64_t>(plan->layers.size()) != layers) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(name, " has ", plan->layers.size(),
                                                          " layers but the model has ", layers)));
    }
    // Per layer, or per (layer, KV head) for a per-head plan (a per-head
    // layer's own tuple is unused; the runtime decides which sizes it takes).
    plans.push_back(plan->RuntimeTuples());
  }
  auto retrieval = runtime::ReadRetrievalFile(*retrieval_path);
  if (!retrieval.ok()) return Fail(retrieval.status());
  auto heldout = ReadFile(*heldout_path);
  if (!heldout.ok()) return Fail(heldout.status());

  runtime::EvalOptions options;
  options.retrieval_limit = *limit;
  options.bpb_windows = *windows;
  ProgressBar bar(absl::StrCat("evaluating ", names.size(), " plan(s)"));
  auto results = runtime::Evaluate(**model, plans, *retrieval, *heldout, options,
                                     [&](int64_t done, int64_t total) { bar.Update(done, total); });
  bar.Finish();
  if (!results.ok()) return Fail(results.status());

  std::printf("%-28s %10s %8s %8s\n", "plan", "retrieval", "bpb", "ratio");
  nlohmann::json all = nlohmann::json::array();
  for (size_t i = 0; i < names.size(); ++i) {
    const runtime::EvalResult& r = (*results)[i];
    std::printf("%-28s %5lld/%-4lld %8.4f %8.2f\n",
                std::filesystem::path(names[i]).filename().string().c_str(),
                static_cast<long long>(r.retrieval_correct),
                static_cast<long long>(r.retrieval_total), r.bpb, r.ratio);
    nlohmann::json j = ToJson(names[i], r);
    all.push_back(j);
    std::string path;
    if (names.size() == 1 && args->Has("out")) {
      path = *args->Optional("out");
    } else {
      const std::string stem =
          names[i] == "full" ? "full" : std::filesystem::path(names[i]).stem().string();
      path = (std::filesystem::path(*args->Optional("out-dir")) / (stem + ".result.json")).string();
    }
    absl::Status written = WriteFileAtomic(path, j.dump(1) + "\n");
    if (!written.ok()) return Fail(written);
  }
  if (args->Has("json")) std::printf("%s\n", all.dump(1).c_str());
  return kExitOk;
}

}  // namespace moend::ctl

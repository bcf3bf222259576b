#include "clients/node/inference_node.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "clients/inference/compressed_sequence.h"
#include "core/status_macros.h"

namespace moend::node {
namespace {

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

InferenceNode::InferenceNode(std::unique_ptr<Model> model,
                             std::unique_ptr<plan_client::PlanWatch> watch,
                             prometheus::Registry* metrics)
    : model_(std::move(model)), watch_(std::move(watch)) {
  if (metrics == nullptr) return;
  auto gauge = [&](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(*metrics).Add({});
  };
  kv_bytes_ = gauge("moend_node_kv_cache_bytes",
                    "Bytes the compressed KV caches of in-flight requests hold (packed codes, "
                    "scales, fp16 window and residual)");
  kv_full_bytes_ = gauge("moend_node_kv_cache_uncompressed_bytes",
                         "Bytes an fp16 KV cache of the same in-flight tokens would hold");
  ratio_ = gauge("moend_node_compression_ratio",
                 "Uncompressed / compressed KV bytes of the last finished request");
  plan_version_ = gauge("moend_node_plan_version", "Version of the plan the node applies");
  plan_error_ = gauge("moend_node_plan_predicted_error",
                      "Predicted error (sum of per-layer sensitivities) of the active plan");
  plan_ratio_ = gauge("moend_node_plan_ratio", "Compression ratio the active plan targets");
  tokens_ = &prometheus::BuildCounter()
                 .Name("moend_node_tokens_generated_total")
                 .Help("Tokens generated")
                 .Register(*metrics)
                 .Add({});
  auto& requests = prometheus::BuildCounter()
                       .Name("moend_node_requests_total")
                       .Help("Generate requests by result")
                       .Register(*metrics);
  requests_ok_ = &requests.Add({{"result", "ok"}});
  requests_failed_ = &requests.Add({{"result", "error"}});
}

void InferenceNode::PublishPlan(const plan_client::PlanPtr& plan) {
  if (plan_version_ == nullptr) return;
  plan_version_->Set(plan ? static_cast<double>(plan->table_version) : 0.0);
  plan_error_->Set(plan ? plan->plan.predicted_error : 0.0);
  plan_ratio_->Set(plan ? plan->plan.ratio : 1.0);
}

absl::StatusOr<GenerateResult> InferenceNode::Generate(const GenerateRequest& request) {
  const ModelConfig& c = model_->config();
  auto fail = [&](absl::Status s) {
    if (requests_failed_) requests_failed_->Increment();
    return s;
  };
  if (request.prompt.empty()) return fail(absl::InvalidArgumentError("prompt is empty"));
  if (request.max_new_tokens < 1 || request.max_new_tokens > 4096) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "max_new_tokens ", request.max_new_tokens, " is outside [1, 4096]")));
  }
  const int64_t limit = c.max_position_embeddings > 0 ? c.max_position_embeddings : 1 << 20;
  if (static_cast<int64_t>(request.prompt.size()) + request.max_new_tokens > limit) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("prompt of ", request.prompt.size(), " bytes plus ", request.max_new_tokens,
                     " new tokens exceeds the model's context of ", limit)));
  }
  // One plan for the whole request: read the atomically swapped pointer once.
  GenerateResult result;
  std::vector<CompressionTuple> tuples(static_cast<size_t>(c.num_layers), CompressionTuple{});
  if (request.plan) {
    if (static_cast<int64_t>(request.plan->size()) != c.num_layers) {
      return fail(absl::InvalidArgumentError(absl::StrCat(
          "plan has ", request.plan->size(), " layers but the model has ", c.num_layers)));
    }
    tuples = *request.plan;
  } else if (!request.full_cache && watch_) {
    plan_client::PlanPtr plan = watch_->Current();
    PublishPlan(plan);
    if (plan) {
      if (static_cast<int64_t>(plan->plan.layers.size()) != c.num_layers) {
        return fail(absl::FailedPreconditionError(
            absl::StrCat("the router's plan has ", plan->plan.layers.size(),
                         " layers but the model has ", c.num_layers)));
      }
      for (size_t l = 0; l < tuples.size(); ++l) tuples[l] = plan->plan.layers[l].tuple;
      result.plan_version = plan->table_version;
    }
    // No plan yet (router not reached): serve with the full cache, version 0.
  }

  std::vector<int32_t> prompt;
  for (unsigned char ch : request.prompt) prompt.push_back(ch);
  const auto t0 = std::chrono::steady_clock::now();
  auto prefill = inference::Prefill(*model_, prompt);
  if (!prefill.ok()) return fail(prefill.status());
  auto seq = inference::CompressedSequence::Create(*model_, *prefill, tuples);
  if (!seq.ok()) return fail(seq.status());
  result.prefill_seconds = Since(t0);
  result.prompt_tokens = static_cast<int64_t>(prompt.size());

  const auto t1 = std::chrono::steady_clock::now();
  std::vector<float> last = prefill->last_logits;
  int64_t held = (*seq)->CacheBytes(), held_full = (*seq)->UncompressedBytes();
  held_bytes_ += held;
  held_full_bytes_ += held_full;
  if (kv_bytes_) {
    kv_bytes_->Set(static_cast<double>(held_bytes_.load()));
    kv_full_bytes_->Set(static_cast<double>(held_full_bytes_.load()));
  }
  absl::Status status;
  for (int64_t i = 0; i < request.max_new_tokens; ++i) {
    const int32_t next = static_cast<int32_t>(std::max_element(last.begin(), last.end()) -
                                              last.begin());
    result.text.push_back(static_cast<char>(next));
    if (i + 1 == request.max_new_tokens) break;
    auto logits = (*seq)->Feed(std::vector<int32_t>{next});
    if (!logits.ok()) {
      status = logits.status();
      break;
    }
    last = *std::move(logits);
  }
  result.generated_tokens = static_cast<int64_t>(result.text.size());
  result.kv_cache_bytes = (*seq)->CacheBytes();
  result.full_cache_bytes = (*seq)->UncompressedBytes();
  result.decode_seconds = Since(t1);
  held_bytes_ -= held;
  held_full_bytes_ -= held_full;
  if (kv_bytes_) {
    kv_bytes_->Set(static_cast<double>(held_bytes_.load()));
    kv_full_bytes_->Set(static_cast<double>(held_full_bytes_.load()));
  }
  if (!status.ok()) return fail(status);
  if (tokens_) {
    tokens_->Increment(static_cast<double>(result.generated_tokens));
    requests_ok_->Increment();
    ratio_->Set(static_cast<double>(result.full_cache_bytes) /
                static_cast<double>(result.kv_cache_bytes));
  }
  return result;
}

}  // namespace moend::node

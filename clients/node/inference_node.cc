#include "clients/node/inference_node.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "runtime/streaming_prefill.h"

namespace moend::node {

absl::StatusOr<std::unique_ptr<InferenceNode>> InferenceNode::Create(
    std::unique_ptr<Model> model, std::unique_ptr<plan_client::PlanWatch> watch,
    const InferenceNodeOptions& options, prometheus::Registry* metrics) {
  if (!options.fixed_plan.empty()) {
    MOEND_RETURN_IF_ERROR(runtime::ValidatePlan(model->config(), options.fixed_plan));
  }
  if (!(options.shadow_rate >= 0 && options.shadow_rate <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shadow rate ", options.shadow_rate, " is outside [0, 1]"));
  }
  if (options.shadow_tokens < 2 || options.shadow_tokens > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("shadow tokens ", options.shadow_tokens, " is outside [2, 4096]"));
  }
  auto node = std::unique_ptr<InferenceNode>(
      new InferenceNode(std::move(model), std::move(watch), options));
  MOEND_ASSIGN_OR_RETURN(node->engine_,
                         runtime::Engine::Create(*node->model_, options.engine, metrics));
  if (metrics != nullptr) node->RegisterMetrics(metrics);
  return node;
}

void InferenceNode::RegisterMetrics(prometheus::Registry* metrics) {
  auto gauge = [&](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(*metrics).Add({});
  };
  kv_bytes_ = gauge("moend_node_kv_cache_bytes",
                    "Bytes the KV caches of in-flight requests reserve (packed codes, scales, "
                    "fp16 window and residual, positions), as admitted to the KV pool");
  kv_full_bytes_ = gauge("moend_node_kv_cache_uncompressed_bytes",
                         "Bytes fp16 KV caches of the same in-flight requests would reserve");
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

absl::StatusOr<GenerateResult> InferenceNode::Generate(GenerateRequest request) {
  const ModelConfig& c = model_->config();
  auto fail = [&](absl::Status s) {
    if (requests_failed_) requests_failed_->Increment();
    return s;
  };
  runtime::GenerationRequest g;
  if (!request.prompt_token_ids.empty()) {
    if (!request.prompt.empty()) {
      return fail(absl::InvalidArgumentError("give prompt or prompt_token_ids, not both"));
    }
    g.prompt = std::move(request.prompt_token_ids);
  } else {
    for (unsigned char ch : request.prompt) g.prompt.push_back(ch);
  }
  // One plan for the whole request: the atomically swapped pointer is read once.
  GenerateResult result;
  g.plan.assign(static_cast<size_t>(c.num_layers), CompressionTuple{});
  if (request.plan) {
    g.plan = *request.plan;
  } else if (!request.full_cache) {
    plan_client::PlanPtr plan = watch_ ? watch_->Current() : nullptr;
    if (watch_) PublishPlan(plan);
    if (plan) {
      if (static_cast<int64_t>(plan->plan.layers.size()) != c.num_layers) {
        return fail(absl::FailedPreconditionError(
            absl::StrCat("the router's plan has ", plan->plan.layers.size(),
                         " layers but the model has ", c.num_layers)));
      }
      // num_layers tuples, or num_layers * num_kv_heads for a per-head plan
      // (the runtime's ValidatePlan decides which sizes it applies).
      g.plan = plan->plan.RuntimeTuples();
      result.plan_version = plan->table_version;
    } else if (!fixed_plan_.empty()) {
      g.plan = fixed_plan_;
    }
    // No plan at all (router not reached yet, no --plan): the full cache, version 0.
  }
  // Shadow every 1/rate-th compressed request: request n is chosen when
  // floor((n + 1) * rate) > floor(n * rate).
  const bool compressed =
      std::any_of(g.plan.begin(), g.plan.end(), [](const CompressionTuple& t) {
        return !(t == CompressionTuple{});
      });
  if (compressed && shadow_rate_ > 0) {
    const int64_t n = compressed_requests_++;
    if (static_cast<int64_t>((n + 1) * shadow_rate_) > static_cast<int64_t>(n * shadow_rate_)) {
      g.shadow_tokens = shadow_tokens_;
      g.shadow_label = request.plan ? "request"
                       : result.plan_version > 0 ? absl::StrCat("v", result.plan_version)
                                                 : "fixed";
    }
  }
  g.max_new_tokens = request.max_new_tokens;
  g.sampling = request.sampling;
  g.stop = std::move(request.stop);
  g.deadline = request.deadline;
  g.on_token = std::move(request.on_token);
  g.cancelled = std::move(request.cancelled);

  const int64_t full = c.num_layers * c.num_kv_heads * c.head_dim * 4 *
                       (static_cast<int64_t>(g.prompt.size()) + g.max_new_tokens - 1);
  held_full_bytes_ += full;
  if (kv_full_bytes_) kv_full_bytes_->Set(static_cast<double>(held_full_bytes_.load()));
  absl::StatusOr<runtime::GenerationResult> r = engine_->Generate(std::move(g));
  held_full_bytes_ -= full;
  if (kv_full_bytes_) {
    kv_full_bytes_->Set(static_cast<double>(held_full_bytes_.load()));
    kv_bytes_->Set(static_cast<double>(engine_->stats().used_bytes));
  }
  if (!r.ok()) return fail(r.status());
  result.token_ids = r->tokens;
  for (int32_t t : r->tokens) result.text.push_back(static_cast<char>(t & 0xff));
  result.finish_reason = r->finish == runtime::FinishReason::kStop ? "stop" : "length";
  result.prompt_tokens = r->prompt_tokens;
  result.generated_tokens = r->generated_tokens;
  result.kv_cache_bytes = r->kv_cache_bytes;
  result.full_cache_bytes = r->full_cache_bytes;
  result.reserved_bytes = r->reserved_bytes;
  result.queue_seconds = r->queue_seconds;
  result.prefill_seconds = r->prefill_seconds;
  result.decode_seconds = r->decode_seconds;
  result.shadow_steps = r->shadow_steps;
  result.shadow_agreements = r->shadow_agreements;
  result.shadow_kl_sum = r->shadow_kl_sum;
  if (tokens_) {
    tokens_->Increment(static_cast<double>(result.generated_tokens));
    requests_ok_->Increment();
    if (result.kv_cache_bytes > 0) {
      ratio_->Set(static_cast<double>(result.full_cache_bytes) /
                  static_cast<double>(result.kv_cache_bytes));
    }
  }
  return result;
}

}  // namespace moend::node

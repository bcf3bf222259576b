// The inference node: generation over compressed KV caches whose per-layer
// tuples come from the router's current plan (held by a PlanWatch and swapped
// atomically between requests), a fixed plan (--plan), or the request. The
// work runs in a runtime::Engine: a KV pool with a byte budget, admission by
// each request's real cache bytes, continuous batching.
#ifndef MOEND_CLIENTS_NODE_INFERENCE_NODE_H_
#define MOEND_CLIENTS_NODE_INFERENCE_NODE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/plan_client/plan_client.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "runtime/engine.h"
#include "runtime/model.h"

namespace moend::node {

struct GenerateRequest {
  std::string prompt;                     // bytes; token = byte
  std::vector<int32_t> prompt_token_ids;  // used instead of prompt when not empty
  int64_t max_new_tokens = 32;            // 1..4096
  // Explicit tuples (Plan::RuntimeTuples: one per layer, or per (layer, KV
  // head)); unset = node's plan.
  std::optional<std::vector<CompressionTuple>> plan;
  bool full_cache = false;                // uncompressed fp16 baseline
  runtime::SamplingParams sampling;
  std::vector<std::vector<int32_t>> stop;
  absl::Time deadline = absl::InfiniteFuture();
  std::function<void(int32_t)> on_token;  // streaming; called on the engine thread
  std::function<bool()> cancelled;
};

struct GenerateResult {
  std::string text;                // the generated tokens as bytes (ids < 256)
  std::vector<int32_t> token_ids;
  std::string finish_reason;       // "length" or "stop"
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  uint64_t plan_version = 0;  // 0: full cache, a fixed or explicit plan, or no plan yet
  int64_t kv_cache_bytes = 0;
  int64_t full_cache_bytes = 0;
  int64_t reserved_bytes = 0;
  double queue_seconds = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  int64_t shadow_steps = 0;       // steps compared against the full-cache shadow
  int64_t shadow_agreements = 0;  // ... whose greedy token agreed
  double shadow_kl_sum = 0;       // summed KL(full || compressed), nats
};

struct InferenceNodeOptions {
  runtime::EngineOptions engine;
  // A fixed plan served when the request carries none and there is no router
  // plan (--plan FILE), as Plan::RuntimeTuples; empty = full cache.
  std::vector<CompressionTuple> fixed_plan;
  // Fraction of compressed requests that also decode their first
  // shadow_tokens tokens with the full cache, to measure agreement and KL
  // (moend_node_shadow_*). Chosen deterministically: every 1/rate-th request.
  double shadow_rate = 0;
  int64_t shadow_tokens = 16;
};

class InferenceNode {
 public:
  // `watch` may be null (then the fixed plan, or the full cache, unless a
  // request carries a plan); `metrics` may be null.
  static absl::StatusOr<std::unique_ptr<InferenceNode>> Create(
      std::unique_ptr<Model> model, std::unique_ptr<plan_client::PlanWatch> watch,
      const InferenceNodeOptions& options, prometheus::Registry* metrics);

  // InvalidArgument for an empty prompt, tokens outside the vocabulary, a
  // prompt longer than the model's context, a bad token count, sampling out
  // of range or a plan of the wrong length; RESOURCE_EXHAUSTED when the
  // request can never fit the KV pool; CANCELLED / DEADLINE_EXCEEDED.
  absl::StatusOr<GenerateResult> Generate(GenerateRequest request);

  const Model& model() const { return *model_; }
  runtime::Engine& engine() { return *engine_; }

 private:
  InferenceNode(std::unique_ptr<Model> model, std::unique_ptr<plan_client::PlanWatch> watch,
                const InferenceNodeOptions& options)
      : model_(std::move(model)),
        watch_(std::move(watch)),
        fixed_plan_(options.fixed_plan),
        shadow_rate_(options.shadow_rate),
        shadow_tokens_(options.shadow_tokens) {}
  void RegisterMetrics(prometheus::Registry* metrics);
  void PublishPlan(const plan_client::PlanPtr& plan);

  std::unique_ptr<Model> model_;
  std::unique_ptr<plan_client::PlanWatch> watch_;
  std::vector<CompressionTuple> fixed_plan_;
  const double shadow_rate_;
  const int64_t shadow_tokens_;
  std::atomic<int64_t> compressed_requests_{0};
  std::unique_ptr<runtime::Engine> engine_;
  std::atomic<int64_t> held_full_bytes_{0};
  prometheus::Gauge* kv_bytes_ = nullptr;
  prometheus::Gauge* kv_full_bytes_ = nullptr;
  prometheus::Gauge* ratio_ = nullptr;
  prometheus::Gauge* plan_version_ = nullptr;
  prometheus::Gauge* plan_error_ = nullptr;
  prometheus::Gauge* plan_ratio_ = nullptr;
  prometheus::Counter* tokens_ = nullptr;
  prometheus::Counter* requests_ok_ = nullptr;
  prometheus::Counter* requests_failed_ = nullptr;
};

}  // namespace moend::node

#endif  // MOEND_CLIENTS_NODE_INFERENCE_NODE_H_

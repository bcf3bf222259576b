// The reference inference node: generates text with the shipped model over a
// compressed KV cache whose per-layer tuples come from the router's current
// plan (held by a PlanWatch and swapped atomically between requests).
#ifndef MOEND_CLIENTS_NODE_INFERENCE_NODE_H_
#define MOEND_CLIENTS_NODE_INFERENCE_NODE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "clients/plan_client/plan_client.h"
#include "core/model.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace moend::node {

struct GenerateRequest {
  std::string prompt;                     // bytes; token = byte
  int64_t max_new_tokens = 32;            // 1..4096
  std::optional<std::vector<CompressionTuple>> plan;  // explicit tuples; unset = router plan
  bool full_cache = false;                // uncompressed fp16 baseline
};

struct GenerateResult {
  std::string text;
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  uint64_t plan_version = 0;  // 0: full cache (asked for, or no plan from the router yet)
  int64_t kv_cache_bytes = 0;
  int64_t full_cache_bytes = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

class InferenceNode {
 public:
  // `watch` may be null (then only full-cache or explicit-plan requests
  // compress); `metrics` may be null.
  InferenceNode(std::unique_ptr<Model> model, std::unique_ptr<plan_client::PlanWatch> watch,
                prometheus::Registry* metrics);

  // Greedy generation. InvalidArgument for an empty prompt, a prompt longer
  // than the model's context, a bad token count or a plan of the wrong length.
  absl::StatusOr<GenerateResult> Generate(const GenerateRequest& request);

  const Model& model() const { return *model_; }

 private:
  void PublishPlan(const plan_client::PlanPtr& plan);

  std::unique_ptr<Model> model_;
  std::unique_ptr<plan_client::PlanWatch> watch_;
  std::atomic<int64_t> held_bytes_{0}, held_full_bytes_{0};
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

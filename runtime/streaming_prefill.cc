#include "runtime/streaming_prefill.h"

#include <algorithm>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "kernels/kv_compress.h"

namespace moend::runtime {

namespace {

bool PerHeadPlan(const ModelConfig& config, std::span<const CompressionTuple> plan) {
  return static_cast<int64_t>(plan.size()) != config.num_layers;
}

// The tuples of layer l: one for every head, or one per KV head.
std::span<const CompressionTuple> LayerTuples(const ModelConfig& config,
                                              std::span<const CompressionTuple> plan,
                                              int64_t layer) {
  if (!PerHeadPlan(config, plan)) return plan.subspan(static_cast<size_t>(layer), 1);
  return plan.subspan(static_cast<size_t>(layer * config.num_kv_heads),
                      static_cast<size_t>(config.num_kv_heads));
}

}  // namespace

absl::Status ValidatePlan(const ModelConfig& config, std::span<const CompressionTuple> plan) {
  const int64_t per_head = config.num_layers * config.num_kv_heads;
  const int64_t size = static_cast<int64_t>(plan.size());
  if (size != config.num_layers && size != per_head) {
    return absl::InvalidArgumentError(absl::StrCat(
        "plan has ", plan.size(), " tuples but the model allows ", config.num_layers,
        " (one per layer) or ", per_head, " (one per layer and KV head: ", config.num_layers,
        " layers x ", config.num_kv_heads, " KV heads)"));
  }
  const bool per_head_plan = PerHeadPlan(config, plan);
  for (int64_t i = 0; i < size; ++i) {
    const absl::Status s = ValidateTuple(plan[static_cast<size_t>(i)]);
    if (s.ok()) continue;
    return absl::InvalidArgumentError(
        per_head_plan ? absl::StrCat("layer ", i / config.num_kv_heads, " KV head ",
                                     i % config.num_kv_heads, ": ", s.message())
                      : absl::StrCat("layer ", i, ": ", s.message()));
  }
  return absl::OkStatus();
}

const CompressionTuple& HeadTuple(const ModelConfig& config, std::span<const CompressionTuple> plan,
                                  int64_t layer, int64_t head) {
  return PerHeadPlan(config, plan) ? plan[static_cast<size_t>(layer * config.num_kv_heads + head)]
                                   : plan[static_cast<size_t>(layer)];
}

int64_t ReservedSequenceBytes(const ModelConfig& config, std::span<const CompressionTuple> plan,
                              int64_t prompt_tokens, int64_t appended) {
  const int64_t hkv = config.num_kv_heads;
  std::vector<int> kbits(static_cast<size_t>(hkv)), vbits(static_cast<size_t>(hkv));
  std::vector<int64_t> kept(static_cast<size_t>(hkv));
  int64_t total = 0;
  for (int64_t l = 0; l < config.num_layers; ++l) {
    for (int64_t h = 0; h < hkv; ++h) {
      const CompressionTuple& t = HeadTuple(config, plan, l, h);
      kbits[static_cast<size_t>(h)] = t.kbits;
      vbits[static_cast<size_t>(h)] = t.vbits;
      kept[static_cast<size_t>(h)] = KeptTokens(t.keep, prompt_tokens);
    }
    total += kernels::ReservedLayerBytes(kernels::LayerFormat::PerHead(config.head_dim, kbits, vbits),
                                         kept, WindowTokens(prompt_tokens), appended);
  }
  return total;
}

absl::StatusOr<std::unique_ptr<PrefillRun>> PrefillRun::Start(
    const Model& model, std::span<const int32_t> tokens,
    std::span<const std::vector<CompressionTuple>> plans, const PrefillOptions& options) {
  const ModelConfig& c = model.config();
  MOEND_RETURN_IF_ERROR(Model::CheckTokens(c, tokens));
  for (size_t p = 0; p < plans.size(); ++p) {
    const absl::Status s = ValidatePlan(c, plans[p]);
    if (!s.ok()) {
      return plans.size() == 1 ? s
                               : absl::InvalidArgumentError(absl::StrCat("plan ", p, ": ",
                                                                         s.message()));
    }
  }
  if (options.appended_capacity < 0) {
    return absl::InvalidArgumentError("appended_capacity must not be negative");
  }
  if (!options.appended_per_plan.empty() && options.appended_per_plan.size() != plans.size()) {
    return absl::InvalidArgumentError(absl::StrCat("appended_per_plan has ",
                                                   options.appended_per_plan.size(),
                                                   " entries for ", plans.size(), " plans"));
  }
  return std::unique_ptr<PrefillRun>(new PrefillRun(model, tokens, plans, options));
}

PrefillRun::PrefillRun(const Model& model, std::span<const int32_t> tokens,
                       std::span<const std::vector<CompressionTuple>> plans,
                       const PrefillOptions& options)
    : model_(model), plans_(plans.begin(), plans.end()), options_(options) {
  const ModelConfig& c = model.config();
  n_ = static_cast<int64_t>(tokens.size());
  const int64_t h = c.num_heads, hkv = c.num_kv_heads, d = c.head_dim;
  // A multiple of 64, so that attention over a chunk of queries is exactly
  // that chunk of the whole layer's attention (Model::CausalAttention).
  chunk_ = std::clamp<int64_t>((std::max<int64_t>(options.chunk_tokens, 1) + 63) / 64 * 64, 64,
                               std::max<int64_t>(n_, 64));
  result_.caches.resize(plans.size());
  // The residual stream and one layer's q, k, v (head-major, all n rows) and
  // attention output; chunk-sized temporaries for the projections.
  x_.resize(static_cast<size_t>(n_ * c.hidden_size));
  q_.resize(static_cast<size_t>(h * n_ * d));
  k_.resize(static_cast<size_t>(hkv * n_ * d));
  v_.resize(static_cast<size_t>(hkv * n_ * d));
  attn_.resize(static_cast<size_t>(n_ * h * d));
  cq_.resize(static_cast<size_t>(h * chunk_ * d));
  ck_.resize(static_cast<size_t>(hkv * chunk_ * d));
  cv_.resize(static_cast<size_t>(hkv * chunk_ * d));
  model.Embed(tokens, x_.data());
}

bool PrefillRun::done() const { return layer_ == model_.config().num_layers; }

absl::Status PrefillRun::NextLayer() {
  if (done()) return absl::FailedPreconditionError("the prefill has run every layer");
  const int64_t layer = layer_;
  while (layer_ == layer) MOEND_RETURN_IF_ERROR(Unit());
  return absl::OkStatus();
}

absl::Status PrefillRun::Advance(int64_t rows) {
  if (done()) return absl::FailedPreconditionError("the prefill has run every layer");
  int64_t spent = 0;
  do {
    spent += std::min(chunk_, n_ - row_);  // the rows of the unit about to run
    MOEND_RETURN_IF_ERROR(Unit());
  } while (!done() && spent < rows);
  return absl::OkStatus();
}

absl::Status PrefillRun::Unit() {
  const ModelConfig& c = model_.config();
  const int64_t n = n_, l = layer_;
  const int64_t h = c.num_heads, hkv = c.num_kv_heads, d = c.head_dim, hidden = c.hidden_size;
  const int64_t r0 = row_, rows = std::min(chunk_, n - r0);
  switch (phase_) {
    case Phase::kProject: {  // q, k, v of rows [r0, r0 + rows)
      model_.AttentionInputs(l, x_.data() + r0 * hidden, rows, r0, cq_.data(), ck_.data(),
                             cv_.data());
      for (int64_t head = 0; head < h; ++head) {
        std::copy_n(cq_.data() + head * rows * d, rows * d, q_.data() + (head * n + r0) * d);
      }
      for (int64_t head = 0; head < hkv; ++head) {
        std::copy_n(ck_.data() + head * rows * d, rows * d, k_.data() + (head * n + r0) * d);
        std::copy_n(cv_.data() + head * rows * d, rows * d, v_.data() + (head * n + r0) * d);
      }
      row_ += rows;
      if (row_ == n) {
        row_ = 0;
        phase_ = Phase::kCompress;
      }
      return absl::OkStatus();
    }
    case Phase::kCompress: {
      // Compress this layer for every plan now: its K/V is complete.
      const kernels::LayerTensors tensors{q_.data(), k_.data(), v_.data(), h, hkv, n, d};
      // Scores are computed once per layer, and only if some plan evicts in
      // some head; every plan's heads select from them.
      std::optional<kernels::EvictionScores> scores;
      for (size_t p = 0; p < plans_.size(); ++p) {
        const std::span<const CompressionTuple> tuples = LayerTuples(c, plans_[p], l);
        const bool evicts =
            std::any_of(tuples.begin(), tuples.end(), [&](const CompressionTuple& t) {
              return KeptTokens(t.keep, n) != CandidateTokens(n);
            });
        if (evicts && !scores) {
          MOEND_ASSIGN_OR_RETURN(scores,
                                 kernels::ComputeEvictionScores(tensors, n, options_.backend));
        }
        MOEND_ASSIGN_OR_RETURN(kernels::CompressedLayer layer,
                               kernels::CompressHeads(tensors, n, tuples, options_.backend,
                                                      scores ? &*scores : nullptr));
        layer.Reserve(options_.appended_per_plan.empty() ? options_.appended_capacity
                                                         : options_.appended_per_plan[p]);
        result_.caches[p].push_back(std::move(layer));
      }
      phase_ = Phase::kAttend;
      return absl::OkStatus();
    }
    case Phase::kAttend:  // query rows [r0, r0 + rows); chunk_ is a multiple of 64
      Model::CausalAttention(q_.data(), k_.data(), v_.data(), h, hkv, n, d, attn_.data(), r0,
                             r0 + rows);
      row_ += rows;
      if (row_ == n) {
        row_ = 0;
        phase_ = Phase::kFinish;
      }
      return absl::OkStatus();
    case Phase::kFinish:  // o_proj and the MLP of rows [r0, r0 + rows)
      model_.FinishLayer(l, attn_.data() + r0 * h * d, rows, x_.data() + r0 * hidden);
      row_ += rows;
      if (row_ < n) return absl::OkStatus();
      row_ = 0;
      phase_ = Phase::kProject;
      ++layer_;
      if (done()) {
        result_.last_logits.resize(static_cast<size_t>(c.vocab_size));
        model_.Logits(x_.data() + (n - 1) * hidden, 1, result_.last_logits.data());
        // The activations are no longer needed; the caches are.
        for (std::vector<float>* buffer : {&x_, &q_, &k_, &v_, &attn_, &cq_, &ck_, &cv_}) {
          std::vector<float>().swap(*buffer);
        }
      }
      return absl::OkStatus();
  }
  return absl::InternalError("unknown prefill phase");
}

PrefillResult PrefillRun::TakeResult() { return std::move(result_); }

absl::StatusOr<PrefillResult> StreamingPrefill(const Model& model, std::span<const int32_t> tokens,
                                               std::span<const std::vector<CompressionTuple>> plans,
                                               const PrefillOptions& options) {
  MOEND_ASSIGN_OR_RETURN(std::unique_ptr<PrefillRun> run,
                         PrefillRun::Start(model, tokens, plans, options));
  while (!run->done()) MOEND_RETURN_IF_ERROR(run->NextLayer());
  return run->TakeResult();
}

}  // namespace moend::runtime

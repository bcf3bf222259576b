#include "runtime/streaming_prefill.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "kernels/kv_compress.h"

namespace moend::runtime {

absl::Status ValidatePlan(const ModelConfig& config, std::span<const CompressionTuple> plan) {
  if (static_cast<int64_t>(plan.size()) != config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("plan has ", plan.size(),
                                                   " layers but the model has ",
                                                   config.num_layers));
  }
  for (size_t l = 0; l < plan.size(); ++l) {
    const absl::Status s = ValidateTuple(plan[l]);
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("layer ", l, ": ", s.message()));
  }
  return absl::OkStatus();
}

int64_t ReservedSequenceBytes(const ModelConfig& config, std::span<const CompressionTuple> plan,
                              int64_t prompt_tokens, int64_t appended) {
  int64_t total = 0;
  for (const CompressionTuple& t : plan) {
    const kernels::LayerFormat f{config.num_kv_heads, config.head_dim, t.kbits, t.vbits};
    total += kernels::ReservedLayerBytes(f, KeptTokens(t.keep, prompt_tokens),
                                         WindowTokens(prompt_tokens), appended);
  }
  return total;
}

absl::StatusOr<PrefillResult> StreamingPrefill(const Model& model, std::span<const int32_t> tokens,
                                               std::span<const std::vector<CompressionTuple>> plans,
                                               const PrefillOptions& options) {
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
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t h = c.num_heads, hkv = c.num_kv_heads, d = c.head_dim, hidden = c.hidden_size;
  const int64_t chunk = std::clamp<int64_t>(options.chunk_tokens, 1, n);

  PrefillResult result;
  result.caches.resize(plans.size());
  // The residual stream and one layer's q, k, v (head-major, all n rows) and
  // attention output; chunk-sized temporaries for the projections.
  std::vector<float> x(static_cast<size_t>(n * hidden));
  std::vector<float> q(static_cast<size_t>(h * n * d)), k(static_cast<size_t>(hkv * n * d)),
      v(static_cast<size_t>(hkv * n * d)), attn(static_cast<size_t>(n * h * d));
  std::vector<float> cq(static_cast<size_t>(h * chunk * d)),
      ck(static_cast<size_t>(hkv * chunk * d)), cv(static_cast<size_t>(hkv * chunk * d));
  model.Embed(tokens, x.data());
  for (int64_t l = 0; l < c.num_layers; ++l) {
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
      const int64_t rows = std::min(chunk, n - r0);
      model.AttentionInputs(l, x.data() + r0 * hidden, rows, r0, cq.data(), ck.data(),
                            cv.data());
      for (int64_t head = 0; head < h; ++head) {
        std::copy_n(cq.data() + head * rows * d, rows * d, q.data() + (head * n + r0) * d);
      }
      for (int64_t head = 0; head < hkv; ++head) {
        std::copy_n(ck.data() + head * rows * d, rows * d, k.data() + (head * n + r0) * d);
        std::copy_n(cv.data() + head * rows * d, rows * d, v.data() + (head * n + r0) * d);
      }
    }
    // Compress this layer for every plan now: its K/V is complete.
    const kernels::LayerTensors tensors{q.data(), k.data(), v.data(), h, hkv, n, d};
    std::optional<kernels::EvictionScores> scores;
    for (size_t p = 0; p < plans.size(); ++p) {
      const CompressionTuple& t = plans[p][static_cast<size_t>(l)];
      const int64_t m = KeptTokens(t.keep, n);
      kernels::KeptSet kept;
      if (m == CandidateTokens(n)) {
        kept = {hkv, n, m, {}};
        kept.index.reserve(static_cast<size_t>(hkv * m));
        for (int64_t head = 0; head < hkv; ++head) {
          for (int64_t j = 0; j < m; ++j) kept.index.push_back(static_cast<int32_t>(j));
        }
      } else {
        if (!scores) {
          MOEND_ASSIGN_OR_RETURN(scores,
                                 kernels::ComputeEvictionScores(tensors, n, options.backend));
        }
        MOEND_ASSIGN_OR_RETURN(kept, kernels::SelectKept(*scores, m, options.backend));
      }
      MOEND_ASSIGN_OR_RETURN(
          kernels::CompressedLayer layer,
          kernels::QuantizeKept(tensors, kept, t.kbits, t.vbits, options.backend));
      layer.Reserve(options.appended_per_plan.empty() ? options.appended_capacity
                                                      : options.appended_per_plan[p]);
      result.caches[p].push_back(std::move(layer));
    }
    Model::CausalAttention(q.data(), k.data(), v.data(), h, hkv, n, d, attn.data());
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
      const int64_t rows = std::min(chunk, n - r0);
      model.FinishLayer(l, attn.data() + r0 * h * d, rows, x.data() + r0 * hidden);
    }
  }
  result.last_logits.resize(static_cast<size_t>(c.vocab_size));
  model.Logits(x.data() + (n - 1) * hidden, 1, result.last_logits.data());
  return result;
}

}  // namespace moend::runtime

// Validation and backend dispatch of the compression entry points.
#include "kernels/kv_compress.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "kernels/reference/reference.h"
#ifdef MOEND_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace moend::kernels {

absl::Status ValidateLayerTensors(const LayerTensors& x, int64_t prefix_tokens) {
  if (x.k == nullptr || x.v == nullptr) return absl::InvalidArgumentError("k or v is null");
  if (x.num_kv_heads <= 0 || x.num_heads <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("head counts must be positive (num_heads ",
                                                   x.num_heads, ", num_kv_heads ", x.num_kv_heads, ")"));
  }
  if (x.num_heads % x.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_heads ", x.num_heads,
                                                   " is not a multiple of num_kv_heads ", x.num_kv_heads));
  }
  if (x.head_dim != 64 && x.head_dim != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("head dim ", x.head_dim, " is not supported (allowed: 64, 128)"));
  }
  if (prefix_tokens < 1 || prefix_tokens > x.tokens) {
    return absl::InvalidArgumentError(absl::StrCat("prefix ", prefix_tokens,
                                                   " is outside [1, tokens = ", x.tokens, "]"));
  }
  if (prefix_tokens > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("prefix ", prefix_tokens, " exceeds 2^30 tokens"));
  }
  return absl::OkStatus();
}

absl::StatusOr<EvictionScores> ComputeEvictionScores(const LayerTensors& x, int64_t prefix_tokens,
                                                     Backend backend) {
  MOEND_RETURN_IF_ERROR(ValidateLayerTensors(x, prefix_tokens));
  if (x.q == nullptr) return absl::InvalidArgumentError("q is null (scoring needs the window queries)");
  MOEND_ASSIGN_OR_RETURN(Backend b, ResolveBackend(backend));
#ifdef MOEND_WITH_CUDA
  if (b == Backend::kCuda) return cuda::ComputeEvictionScores(x, prefix_tokens);
#endif
  (void)b;
  return ref::ComputeEvictionScores(x, prefix_tokens);
}

absl::StatusOr<KeptSet> SelectKept(const EvictionScores& scores, int64_t kept, Backend backend) {
  if (scores.num_kv_heads <= 0 || scores.candidates < 0 ||
      static_cast<int64_t>(scores.score.size()) != scores.num_kv_heads * scores.candidates) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scores hold ", scores.score.size(), " values, expected num_kv_heads * candidates = ",
        scores.num_kv_heads, " * ", scores.candidates));
  }
  if (kept < 0 || kept > scores.candidates) {
    return absl::InvalidArgumentError(
        absl::StrCat("kept ", kept, " is outside [0, candidates = ", scores.candidates, "]"));
  }
  MOEND_ASSIGN_OR_RETURN(Backend b, ResolveBackend(backend));
#ifdef MOEND_WITH_CUDA
  if (b == Backend::kCuda) return cuda::SelectKept(scores, kept);
#endif
  (void)b;
  return ref::SelectKept(scores, kept);
}

absl::StatusOr<CompressedLayer> QuantizeKept(const LayerTensors& x, const KeptSet& kept, int kbits,
                                             int vbits, Backend backend) {
  MOEND_RETURN_IF_ERROR(ValidateLayerTensors(x, kept.prefix_tokens));
  MOEND_RETURN_IF_ERROR(ValidateFormat({x.num_kv_heads, x.head_dim, kbits, vbits}));
  const int64_t cand = CandidateTokens(kept.prefix_tokens);
  if (kept.num_kv_heads != x.num_kv_heads || kept.kept < 0 || kept.kept > cand ||
      static_cast<int64_t>(kept.index.size()) != kept.num_kv_heads * kept.kept) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kept set (", kept.num_kv_heads, " heads x ", kept.kept, ", ", kept.index.size(),
        " indices) does not match ", x.num_kv_heads, " KV heads and ", cand, " candidates"));
  }
  for (int64_t h = 0; h < kept.num_kv_heads; ++h) {
    for (int64_t i = 0; i < kept.kept; ++i) {
      const int32_t j = kept.index[h * kept.kept + i];
      if (j < 0 || j >= cand || (i > 0 && j <= kept.index[h * kept.kept + i - 1])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "kept index ", j, " of head ", h, " is out of [0, ", cand, ") or not ascending"));
      }
    }
  }
  MOEND_ASSIGN_OR_RETURN(Backend b, ResolveBackend(backend));
#ifdef MOEND_WITH_CUDA
  if (b == Backend::kCuda) return cuda::QuantizeKept(x, kept, kbits, vbits);
#endif
  (void)b;
  return ref::QuantizeKept(x, kept, kbits, vbits);
}

namespace {

// Every candidate of every head kept, ascending: no scores needed.
KeptSet KeepAll(int64_t num_kv_heads, int64_t prefix_tokens, int64_t m) {
  KeptSet all{num_kv_heads, prefix_tokens, m, {}};
  all.index.reserve(num_kv_heads * m);
  for (int64_t h = 0; h < num_kv_heads; ++h) {
    for (int64_t j = 0; j < m; ++j) all.index.push_back(static_cast<int32_t>(j));
  }
  return all;
}

}  // namespace

absl::StatusOr<CompressedLayer> CompressLayer(const LayerTensors& x, int64_t prefix_tokens,
                                              const CompressionTuple& tuple, Backend backend) {
  return CompressHeads(x, prefix_tokens, std::span<const CompressionTuple>(&tuple, 1), backend);
}

absl::StatusOr<CompressedLayer> CompressHeads(const LayerTensors& x, int64_t prefix_tokens,
                                              std::span<const CompressionTuple> head_tuples,
                                              Backend backend, const EvictionScores* scores) {
  const int64_t hkv = x.num_kv_heads;
  const int64_t n_tuples = static_cast<int64_t>(head_tuples.size());
  if (n_tuples != 1 && n_tuples != hkv) {
    return absl::InvalidArgumentError(absl::StrCat(
        n_tuples, " compression tuples for ", hkv,
        " KV heads (allowed: one for every head, or one per KV head)"));
  }
  for (int64_t h = 0; h < n_tuples; ++h) {
    const absl::Status s = ValidateTuple(head_tuples[h]);
    if (!s.ok()) {
      return n_tuples == 1 ? s
                           : absl::InvalidArgumentError(
                                 absl::StrCat("KV head ", h, ": ", s.message()));
    }
  }
  MOEND_RETURN_IF_ERROR(ValidateLayerTensors(x, prefix_tokens));
  const int64_t cand = CandidateTokens(prefix_tokens);
  if (scores != nullptr &&
      (scores->num_kv_heads != hkv || scores->prefix_tokens != prefix_tokens ||
       scores->candidates != cand ||
       static_cast<int64_t>(scores->score.size()) != hkv * cand)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scores are for ", scores->num_kv_heads, " KV heads at prefix ", scores->prefix_tokens,
        " (", scores->score.size(), " values) but the layer has ", hkv, " KV heads at prefix ",
        prefix_tokens));
  }
  const auto tuple_of = [&](int64_t h) -> const CompressionTuple& {
    return head_tuples[n_tuples == 1 ? 0 : h];
  };
  // Scores are computed at most once, and only if some head evicts.
  std::optional<EvictionScores> own_scores;
  const auto kept_for = [&](int64_t m) -> absl::StatusOr<KeptSet> {
    if (m == cand) return KeepAll(hkv, prefix_tokens, m);  // keep 1 (or no candidates)
    if (scores == nullptr) {
      MOEND_ASSIGN_OR_RETURN(own_scores, ComputeEvictionScores(x, prefix_tokens, backend));
      scores = &*own_scores;
    }
    return SelectKept(*scores, m, backend);
  };

  // A uniform layer is quantized in one call. A mixed one (DESIGN.md section
  // 2.9a) selects once per distinct kept count and quantizes each KV head
  // alone, from a one-KV-head view of the layer, with its own bits.
  bool uniform = true;
  for (int64_t h = 1; h < hkv; ++h) uniform = uniform && tuple_of(h) == tuple_of(0);
  if (uniform) {
    const CompressionTuple& t = tuple_of(0);
    MOEND_ASSIGN_OR_RETURN(KeptSet kept, kept_for(KeptTokens(t.keep, prefix_tokens)));
    return QuantizeKept(x, kept, t.kbits, t.vbits, backend);
  }
  std::vector<int> kbits(hkv), vbits(hkv);
  for (int64_t h = 0; h < hkv; ++h) {
    kbits[h] = tuple_of(h).kbits;
    vbits[h] = tuple_of(h).vbits;
  }
  CompressedLayer layer(LayerFormat::PerHead(x.head_dim, kbits, vbits), prefix_tokens);
  std::vector<std::pair<int64_t, KeptSet>> selections;  // (kept count, its selection)
  const int64_t group = x.num_heads / hkv, rows = x.tokens * x.head_dim;
  for (int64_t h = 0; h < hkv; ++h) {
    const CompressionTuple& t = tuple_of(h);
    const int64_t m = KeptTokens(t.keep, prefix_tokens);
    auto it = std::find_if(selections.begin(), selections.end(),
                           [&](const auto& s) { return s.first == m; });
    if (it == selections.end()) {
      MOEND_ASSIGN_OR_RETURN(KeptSet kept, kept_for(m));
      selections.emplace_back(m, std::move(kept));
      it = selections.end() - 1;
    }
    const KeptSet& all = it->second;
    KeptSet one{1, all.prefix_tokens, all.kept,
                std::vector<int32_t>(all.index.begin() + h * all.kept,
                                     all.index.begin() + (h + 1) * all.kept)};
    const LayerTensors head{x.q + h * group * rows, x.k + h * rows, x.v + h * rows, group, 1,
                            x.tokens, x.head_dim};
    MOEND_ASSIGN_OR_RETURN(CompressedLayer part,
                           QuantizeKept(head, one, t.kbits, t.vbits, backend));
    layer.head(h) = std::move(part.head(0));
  }
  return layer;
}

}  // namespace moend::kernels

// Validation and backend dispatch of the compression entry points.
#include "kernels/kv_compress.h"

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

absl::StatusOr<CompressedLayer> CompressLayer(const LayerTensors& x, int64_t prefix_tokens,
                                              const CompressionTuple& tuple, Backend backend) {
  MOEND_RETURN_IF_ERROR(ValidateTuple(tuple));
  MOEND_RETURN_IF_ERROR(ValidateLayerTensors(x, prefix_tokens));
  const int64_t m = KeptTokens(tuple.keep, prefix_tokens);
  const int64_t cand = CandidateTokens(prefix_tokens);
  if (m == cand) {  // every candidate kept (or none exist): no scores needed
    KeptSet all{x.num_kv_heads, prefix_tokens, m, {}};
    all.index.reserve(x.num_kv_heads * m);
    for (int64_t h = 0; h < x.num_kv_heads; ++h) {
      for (int64_t j = 0; j < m; ++j) all.index.push_back(static_cast<int32_t>(j));
    }
    return QuantizeKept(x, all, tuple.kbits, tuple.vbits, backend);
  }
  MOEND_ASSIGN_OR_RETURN(EvictionScores scores, ComputeEvictionScores(x, prefix_tokens, backend));
  MOEND_ASSIGN_OR_RETURN(KeptSet kept, SelectKept(scores, m, backend));
  return QuantizeKept(x, kept, tuple.kbits, tuple.vbits, backend);
}

}  // namespace moend::kernels

// Compression of one layer's prefix cache (DESIGN.md section 2): SnapKV
// eviction scores, per-KV-head top-m selection, KIVI-style quantization.
//
// Split for reuse by calibration: scores are computed once per layer and
// sequence and reused for every keep ratio; a selection is reused for every
// (K bits, V bits) pair.
#ifndef MOEND_KERNELS_KV_COMPRESS_H_
#define MOEND_KERNELS_KV_COMPRESS_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/compression.h"
#include "kernels/backend.h"
#include "kernels/compressed_cache.h"

namespace moend::kernels {

// One layer's activations of one sequence, float32, row-major (not owned).
struct LayerTensors {
  const float* q = nullptr;  // [num_heads, tokens, head_dim]; scoring reads rows [c-32, c)
  const float* k = nullptr;  // [num_kv_heads, tokens, head_dim], after RoPE
  const float* v = nullptr;  // [num_kv_heads, tokens, head_dim]
  int64_t num_heads = 0;     // query heads, a multiple of num_kv_heads (GQA)
  int64_t num_kv_heads = 0;
  int64_t tokens = 0;        // rows per head; the prefix c must be <= tokens
  int64_t head_dim = 0;      // 64 or 128
};

// Checks shapes and pointers for compression at prefix c (1 <= c <= tokens).
absl::Status ValidateLayerTensors(const LayerTensors& x, int64_t prefix_tokens);

// Smoothed SnapKV scores of the eviction candidates [0, c-32).
struct EvictionScores {
  int64_t num_kv_heads = 0;
  int64_t prefix_tokens = 0;      // c
  int64_t candidates = 0;         // max(0, c - 32)
  std::vector<float> score;       // [num_kv_heads, candidates]
};

// The kept candidates of each KV head.
struct KeptSet {
  int64_t num_kv_heads = 0;
  int64_t prefix_tokens = 0;
  int64_t kept = 0;               // m per head
  std::vector<int32_t> index;     // [num_kv_heads, kept], ascending positions
};

// Score of candidate j for KV head h: sum over the window queries i in
// [c-32, c) and the query heads of h's group of softmax_i(q_i . k / sqrt(D))
// over keys [0, i] at j; then a 1-D average pool (kernel 7, stride 1,
// padding 3, padding not counted).
absl::StatusOr<EvictionScores> ComputeEvictionScores(const LayerTensors& x, int64_t prefix_tokens,
                                                     Backend backend = Backend::kAuto);

// Top `kept` candidates per KV head by score (ties: lower index), returned in
// ascending order. kept must be in [0, candidates].
absl::StatusOr<KeptSet> SelectKept(const EvictionScores& scores, int64_t kept,
                                   Backend backend = Backend::kAuto);

// Quantizes the kept tokens with (kbits, vbits) in every head and stores the
// fp16 window: a uniform layer.
absl::StatusOr<CompressedLayer> QuantizeKept(const LayerTensors& x, const KeptSet& kept,
                                             int kbits, int vbits,
                                             Backend backend = Backend::kAuto);

// Score + select (m = KeptTokens(tuple.keep, c)) + quantize.
absl::StatusOr<CompressedLayer> CompressLayer(const LayerTensors& x, int64_t prefix_tokens,
                                              const CompressionTuple& tuple,
                                              Backend backend = Backend::kAuto);

// Per-head tuples (DESIGN.md section 2, "Per-head tuples"): KV head h is
// compressed with head_tuples[h] (head_tuples holds num_kv_heads tuples, or
// one for every head): it keeps its own top m_h = KeptTokens(keep_h, c)
// candidates by its own scores and packs them with its own bits. Head h of the
// result is byte for byte head h of CompressLayer(x, c, head_tuples[h]), and
// a layer whose heads share one tuple is exactly CompressLayer's.
// `scores`, when given, are this layer's ComputeEvictionScores(x, c) (shared
// with other calls); otherwise they are computed once if some head evicts.
// InvalidArgument for bad tensors, a wrong number of tuples, an invalid tuple
// (naming the head) or scores of another shape.
absl::StatusOr<CompressedLayer> CompressHeads(const LayerTensors& x, int64_t prefix_tokens,
                                              std::span<const CompressionTuple> head_tuples,
                                              Backend backend = Backend::kAuto,
                                              const EvictionScores* scores = nullptr);

}  // namespace moend::kernels

#endif  // MOEND_KERNELS_KV_COMPRESS_H_

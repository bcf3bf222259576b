// Attention over compressed caches (DESIGN.md section 2), reading the packed
// codes directly. Softmax scale 1/sqrt(D); query head h uses KV head
// h / (num_heads / num_kv_heads) (GQA).
#ifndef MOEND_KERNELS_ATTENTION_H_
#define MOEND_KERNELS_ATTENTION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "kernels/compressed_cache.h"

namespace moend::kernels {

// One decode step for a batch of sequences of one layer: out[b] = attention of
// q[b] over everything caches[b] holds (quantized part, window, residual;
// append the new token's K/V first). The caches must share one LayerFormat
// (per-head bits included: KV heads may differ in bits, DESIGN.md section 2
// "Per-head tuples"); their lengths may differ per sequence and head.
// q, out: [batch, num_heads, head_dim] float32.
absl::Status DecodeAttention(absl::Span<const CompressedLayer* const> caches, const float* q,
                             int64_t num_heads, float* out, Backend backend = Backend::kAuto);

// Queries over a compressed prefix plus uncompressed keys after it (the
// calibration probes of DESIGN.md, or a chunk of prefill). Query i sits at
// tail position query_offset + i and attends to the whole compressed prefix
// and to tail rows [0, query_offset + i] (causal).
struct ProbeQueries {
  const float* q = nullptr;       // [num_heads, q_head_stride rows, D]; rows [0, num_queries) used
  int64_t num_heads = 0;
  int64_t num_queries = 0;
  int64_t q_head_stride = 0;      // rows between heads of q (0: num_queries)
  const float* k_tail = nullptr;  // [num_kv_heads, tail_head_stride rows, D] (may be null if tail_tokens == 0)
  const float* v_tail = nullptr;
  int64_t tail_tokens = 0;        // rows per head of the tail
  int64_t tail_head_stride = 0;   // rows between heads of k_tail/v_tail (0: tail_tokens)
  int64_t query_offset = 0;       // needs query_offset + num_queries <= tail_tokens
};

// out: [num_heads, num_queries, D] float32.
absl::Status ProbeAttention(const CompressedLayer& prefix, const ProbeQueries& probes, float* out,
                            Backend backend = Backend::kAuto);

}  // namespace moend::kernels

#endif  // MOEND_KERNELS_ATTENTION_H_

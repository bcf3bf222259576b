// The CPU attention kernel over packed caches (docs/DESIGN.md section 7): it
// reads codes, scales and mins where they lie (HeadView), with no dequantized
// copy of a cache, and computes what the reference DecodeAttention computes
// over the same tokens, in float32 (one online softmax per query head; the
// reference uses double: tests/kernels/cpu_attention_test.cc states the
// tolerance). AVX2+FMA+F16C when the CPU has them (chosen at run time), a
// portable loop otherwise; there is no AVX-512 path yet.
#ifndef MOEND_KERNELS_CPU_ATTENTION_H_
#define MOEND_KERNELS_CPU_ATTENTION_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/cache_view.h"

namespace moend::kernels {

// The queries of one sequence at one layer. Query row r of query head h is
// q[r * q_row_stride + h * D]; its output goes to out[r * out_row_stride + h * D].
// Query head h reads KV head h / (num_heads / num_kv_heads) (GQA); every
// row attends to the whole quantized part and window of its KV head and to
// residual rows [0, min(residual, residual_visible + r)) (causal over the
// rows appended in the same step; decode: rows = 1, residual_visible =
// residual). A query head whose KV head shows it no token gets zeros.
struct AttentionItem {
  const HeadView* heads = nullptr;  // [num_kv_heads]
  const float* q = nullptr;         // [rows, q_row_stride] float32
  float* out = nullptr;             // [rows, out_row_stride] float32 (padding untouched)
  int64_t q_row_stride = 0;         // floats; 0: num_heads * head_dim; else >= that
  int64_t out_row_stride = 0;       // floats; 0: num_heads * head_dim; else >= that
  int64_t rows = 1;                 // >= 0 (0: nothing to do)
  int64_t residual_visible = 0;     // >= 0
};

struct AttentionShape {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // 64 or 128
};

enum class CpuIsa {
  kBest,      // the widest this CPU supports
  kPortable,  // plain C++
  kAvx2,      // AVX2 + FMA + F16C
  kAvx512,    // AVX-512 F/BW/VL: reserved, no kernel in this build (FailedPrecondition)
};
// The widest instruction set this CPU supports and this build has a kernel
// for (checked once, at run time): kAvx2 or kPortable.
CpuIsa BestCpuIsa();
std::string CpuIsaName(CpuIsa isa);

// OK when CpuAttention can run `isa` here; FailedPrecondition naming it and
// the best one this CPU has otherwise.
absl::Status CheckCpuIsa(CpuIsa isa);

// out = softmax(q k^T / sqrt(D)) v for every item, row and head; work is
// spread over (item, KV head) with OpenMP (the caller's OpenMP thread count).
// Heads may differ in bits and lengths. InvalidArgument for a bad shape
// (head_dim not 64/128, num_heads not a positive multiple of num_kv_heads),
// null pointers (heads, q, out, or a part with tokens), bits outside
// {2, 4, 8, 16}, inconsistent lengths (quantized - initial_kept not a
// multiple of 32) or short strides; FailedPrecondition for an instruction
// set this CPU lacks (or kAvx512). Nothing is written unless it returns OK.
absl::Status CpuAttention(absl::Span<const AttentionItem> items, const AttentionShape& shape,
                          CpuIsa isa = CpuIsa::kBest);

}  // namespace moend::kernels

#endif  // MOEND_KERNELS_CPU_ATTENTION_H_

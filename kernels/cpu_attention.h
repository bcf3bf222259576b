// The CPU attention kernel over packed caches (docs/DESIGN.md section 7): it
// reads codes, scales and mins where they lie (HeadView), with no dequantized
// copy of a cache, and computes what the reference DecodeAttention computes
// over the same tokens. AVX-512 / AVX2+FMA+F16C when the CPU has them
// (chosen at run time), a portable loop otherwise.
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
// residual).
struct AttentionItem {
  const HeadView* heads = nullptr;  // [num_kv_heads]
  const float* q = nullptr;
  float* out = nullptr;
  int64_t q_row_stride = 0;
  int64_t out_row_stride = 0;
  int64_t rows = 1;
  int64_t residual_visible = 0;
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
  kAvx512,    // AVX-512 F/BW/VL
};
// The widest instruction set this CPU supports (checked once, at run time).
CpuIsa BestCpuIsa();
std::string CpuIsaName(CpuIsa isa);

// out = softmax(q k^T / sqrt(D)) v for every item, row and head; work is
// spread over (item, KV head) with OpenMP. Heads may differ in bits and
// lengths. InvalidArgument for a bad shape, null pointers or bits outside
// {2, 4, 8, 16}; FailedPrecondition for an instruction set this CPU lacks.
absl::Status CpuAttention(absl::Span<const AttentionItem> items, const AttentionShape& shape,
                          CpuIsa isa = CpuIsa::kBest);

}  // namespace moend::kernels

#endif  // MOEND_KERNELS_CPU_ATTENTION_H_

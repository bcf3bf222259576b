// Internal to kernels/cpu: the per-ISA entry points of the CPU attention
// kernel. Each attends one (item, KV head) pair of an already validated call.
#ifndef MOEND_KERNELS_CPU_ATTENTION_CPU_INTERNAL_H_
#define MOEND_KERNELS_CPU_ATTENTION_CPU_INTERNAL_H_

#include <cstdint>

#include "kernels/cpu_attention.h"

namespace moend::kernels::cpu {

constexpr int64_t kUnit = 32;
constexpr int64_t kMaxDim = 128;
constexpr int64_t kChunk = 32;  // V channels per scale/min
constexpr int64_t kMaxChunks = kMaxDim / kChunk;

// Per-thread scratch of one (item, KV head) task. q, o, m, l and visible point
// into thread-local buffers that ThreadScratch grows (never shrinks), so the
// kernels allocate nothing once warm.
struct Scratch {
  float* q = nullptr;          // [QN, D] queries times 1/sqrt(D)
  float* o = nullptr;          // [QN, D] unnormalised outputs
  float* m = nullptr;          // [QN] running max
  float* l = nullptr;          // [QN] running sum
  int64_t* visible = nullptr;  // [QN] residual rows each query sees
  alignas(64) float kf[kUnit * kMaxDim];     // unit's K rows as float (codes or values)
  alignas(64) float vf[kUnit * kMaxDim];     // unit's V rows as float
  alignas(64) float ks[kMaxDim];             // K group scale, min [D]
  alignas(64) float km[kMaxDim];
  // Per query of the current pair:
  alignas(64) float qs[2][kMaxDim];          // q * K scale
  alignas(64) float logit[2][kUnit];
  alignas(64) float p[2][kUnit];             // exp(logit - max), 0 past the visible tokens
  alignas(64) float vs[kMaxChunks * kUnit];  // V scale, min [D/32, 32] (0 past the unit)
  alignas(64) float vm[kMaxChunks * kUnit];
  alignas(64) float w[2][kMaxChunks * kUnit];  // V weights [D/32, 32]
};

// This thread's scratch with room for qn queries of head dim d.
Scratch& ThreadScratch(int64_t qn, int64_t d);

// Writes the outputs of every row and query head of `item` that reads KV
// head `kv_head`. The call was validated by CpuAttention; q_row_stride and
// out_row_stride are already resolved (non-zero).
using AttendHeadFn = void (*)(const AttentionItem& item, const AttentionShape& shape,
                              int64_t kv_head);

void AttendHeadPortable(const AttentionItem& item, const AttentionShape& shape, int64_t kv_head);
void AttendHeadAvx2(const AttentionItem& item, const AttentionShape& shape, int64_t kv_head);

}  // namespace moend::kernels::cpu

#endif  // MOEND_KERNELS_CPU_ATTENTION_CPU_INTERNAL_H_

// Attention over compressed caches: host launcher, split combine and the
// work partition. The kernel itself is in attention_kernel.cuh.
#include <algorithm>

#include "kernels/cuda/attention_kernel.cuh"
#include "kernels/cuda/cuda_util.h"

namespace moend::kernels::cuda {
namespace {

using attention_detail::kMaxGroup;
using attention_detail::kWarps;

// out = sum_s o_s 2^{m_s - M} / sum_s l_s 2^{m_s - M} (the kernel works in base 2). grid (items*num_heads), block D.
__global__ void CombineKernel(const AttentionParams p) {
  const int r = blockIdx.x, item = r / p.num_heads, h = r % p.num_heads, d = threadIdx.x, D = p.head_dim;
  const float* part_o = p.workspace;
  const float* part_ml = p.workspace + static_cast<int64_t>(p.items) * p.num_heads * p.splits * D;
  const int64_t base = static_cast<int64_t>(r) * p.splits;
  float mx = -INFINITY;
  for (int s = 0; s < p.splits; ++s) mx = fmaxf(mx, part_ml[2 * (base + s)]);
  float o = 0.0f, l = 0.0f;
  if (mx != -INFINITY) {
    for (int s = 0; s < p.splits; ++s) {
      const float f = exp2f(part_ml[2 * (base + s)] - mx);  // m is base 2
      o += f * part_o[(base + s) * D + d];
      l += f * part_ml[2 * (base + s) + 1];
    }
  }
  p.out[item * p.out_item_stride + h * p.out_head_stride + d] = l > 0.0f ? o / l : 0.0f;
}

#ifndef MOEND_ATTENTION_COMBINE
#define MOEND_ATTENTION_COMBINE 0
#endif
// MOEND_ATTENTION_COMBINE=1 (variant, unmeasured): the same merge with the
// split statistics loaded once, in parallel (thread s takes splits s, s + D,
// ...), their weights 2^{m_s - M} kept in shared memory, and each thread's
// channel summed over the splits with independent loads: a handful of memory
// round trips instead of about splits/2 (the loop above, unrolled by 4, has a
// dependent global load chain of splits/4 steps per loop). Same weights, same
// result up to the order of the float sums. Shared memory: splits + D/32 floats.
constexpr int kMaxFastCombineSplits = 8192;
__global__ void CombineParallelKernel(const AttentionParams p) {
  extern __shared__ float w_s[];  // [splits] weights, then [D/32] per-warp partials
  const int r = blockIdx.x, item = r / p.num_heads, h = r % p.num_heads, d = threadIdx.x, D = p.head_dim;
  const int lane = d % 32, warp = d / 32, warps = D / 32;
  float* red = w_s + p.splits;  // [warps]
  const float* part_o = p.workspace;
  const float* part_ml = p.workspace + static_cast<int64_t>(p.items) * p.num_heads * p.splits * D;
  const int64_t base = static_cast<int64_t>(r) * p.splits;
  // M = max_s m_s.
  float mx = -INFINITY;
  for (int s = d; s < p.splits; s += D) {
    const float m = part_ml[2 * (base + s)];
    w_s[s] = m;
    mx = fmaxf(mx, m);
  }
  mx = WarpMax(mx);
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = red[0];
  for (int w = 1; w < warps; ++w) mx = fmaxf(mx, red[w]);
  __syncthreads();  // everyone has read red
  // Weights and L = sum_s w_s l_s.
  float l = 0.0f;
  for (int s = d; s < p.splits; s += D) {
    const float w = mx == -INFINITY ? 0.0f : exp2f(w_s[s] - mx);
    w_s[s] = w;
    l += w * part_ml[2 * (base + s) + 1];
  }
  l = WarpSum(l);
  if (lane == 0) red[warp] = l;
  __syncthreads();
  l = 0.0f;
  for (int w = 0; w < warps; ++w) l += red[w];
  // o[d] = sum_s w_s o_s[d]: independent loads, 8 in flight per thread.
  float o = 0.0f;
  const float* po = part_o + base * D + d;
  int s = 0;
  for (; s + 8 <= p.splits; s += 8) {
    float x[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = po[static_cast<int64_t>(s + i) * D];
#pragma unroll
    for (int i = 0; i < 8; ++i) o += w_s[s + i] * x[i];
  }
  for (; s < p.splits; ++s) o += w_s[s] * po[static_cast<int64_t>(s) * D];
  p.out[item * p.out_item_stride + h * p.out_head_stride + d] = l > 0.0f ? o / l : 0.0f;
}

}  // namespace

#ifndef MOEND_ATTENTION_WAVES
#define MOEND_ATTENTION_WAVES 0
#endif
// MOEND_ATTENTION_WAVES=W > 0 (variant, unmeasured): as many splits as fill
// W waves of resident blocks (kMinBlocksPerSm per SM), rounded down so that
// the last wave is not a sliver; 0: about 8 blocks per SM (the default,
// 2.67 waves at batch 8). docs/KERNELS.md, "Known limits". The formula is
// SplitsFor (kernels/cuda/decode_plan.cc, pure, tested on the CPU).
static_assert(kWarps == kAttentionWarps && kMaxGroup == kAttentionMaxGroup,
              "SplitsFor (kernels/cuda/launch.h) must partition the work as the kernel does");

SplitPolicy DeviceSplitPolicy() {
  SplitPolicy p;
  p.sm_count = SmCount();
  p.waves = MOEND_ATTENTION_WAVES;
  p.min_blocks_per_sm = attention_detail::kMinBlocksPerSm;
  return p;
}

int AttentionSplits(int items, int num_heads, int num_kv_heads, int max_units) {
  return SplitsFor(items, num_heads, num_kv_heads, max_units, DeviceSplitPolicy());
}

int LaunchAttention(const AttentionParams& p, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.items <= 0) return cudaSuccess;
  if (p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0 || p.splits <= 0 || p.items > 65535) {
    return cudaErrorInvalidValue;
  }
  const int group = p.num_heads / p.num_kv_heads;
  const dim3 grid(p.splits, p.num_kv_heads * ((group + kMaxGroup - 1) / kMaxGroup), p.items);
  cudaError_t e = DispatchBits(p.kbits, [&](auto kb) { return LaunchAttentionKernel<decltype(kb)::value>(p, grid, s); });
  if (e != cudaSuccess) return e;
  if (MOEND_ATTENTION_COMBINE && p.splits <= kMaxFastCombineSplits) {
    const size_t smem = sizeof(float) * (p.splits + p.head_dim / 32);
    CombineParallelKernel<<<p.items * p.num_heads, p.head_dim, smem, s>>>(p);
  } else {
    CombineKernel<<<p.items * p.num_heads, p.head_dim, 0, s>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace moend::kernels::cuda

// Device code of the attention kernel (included by attention_kb*.cu).
// Attention over packed compressed caches: decode (one query per item) and
// probe/chunk mode (many items sharing one cache, each with its own causal
// count of uncompressed fp32 tail keys). Split-K over units of <= 32 tokens.
//
// Block = 4 warps for one (item, KV head, chunk of <= 8 query heads of the
// group) and one split of the unit range. A warp takes one unit at a time:
//   K phase   lane = token: s[h] = q_h . k_token for the group's heads. For a
//             quantized K group, k = code*scale + min per channel, so
//             q . k = (q o scale) . code + q . min: q o scale is formed once
//             per group in shared memory and codes are read packed.
//   softmax   online per head (max over the warp, running m and l).
//   V phase   lane = D/32 contiguous channels; for each token of the unit,
//             dequantize the lane's channels (scale/min per token and group
//             of 32 channels) and accumulate p * v.
// Warps are merged in shared memory; splits are merged by CombineKernel.
#ifndef MOEND_KERNELS_CUDA_ATTENTION_KERNEL_CUH_
#define MOEND_KERNELS_CUDA_ATTENTION_KERNEL_CUH_

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/launch.h"

namespace moend::kernels::cuda {
namespace attention_detail {

constexpr int kWarps = 4;
constexpr int kMaxGroup = 8;  // query heads per block

template <int B>
__device__ __forceinline__ float CodeToFloat(uint32_t w, int i) {
  // 2^23 + code as a float, minus 2^23: exact, cheaper than an int->float cvt.
  return __uint_as_float(0x4B000000u | ((w >> (B * i)) & ((1u << B) - 1u))) - 8388608.0f;
}

__device__ __forceinline__ uint4 LoadStream(const void* p) {
  return *reinterpret_cast<const uint4*>(p);  // generic: staged rows live in shared memory
}

__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void CpAsyncWaitAll() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
}

// Per-warp staging of one quantized unit (<= 32 tokens) in dynamic shared
// memory: K rows and V rows (padded by 16 bytes against bank conflicts), the
// K group's scale and min, the V rows' scales and mins.
template <int D, int KB, int VB>
struct Staging {
  static constexpr int kRowK = KB < 16 ? D * KB / 8 : 2 * D;
  static constexpr int kRowV = VB < 16 ? D * VB / 8 : 2 * D;
  static constexpr int kStrideK = kRowK + 16;
  static constexpr int kStrideV = kRowV + 16;
  static constexpr int kKParBytes = KB < 16 ? 4 * D : 0;
  static constexpr int kVParBytes = VB < 16 ? 32 * (D / 32) * 4 : 0;
  static constexpr int kWarpBytes = 32 * kStrideK + 32 * kStrideV + kKParBytes + kVParBytes;
  static constexpr int kBlockBytes = 4 * kWarpBytes;
};

// s[h] += qs[h, :] . code row (packed, KB < 16). qs: shared [8][D].
template <int D, int KB>
__device__ __forceinline__ void DotPacked(const uint8_t* row, const float* qs, int nh, float (&s)[kMaxGroup]) {
  constexpr int kChunks = D * KB / 8 / 16;
  constexpr int kDimsPerWord = 32 / KB;
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const uint4 u = LoadStream(row + 16 * c);
    const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int wi = 0; wi < 4; ++wi) {
#pragma unroll
      for (int j = 0; j < kDimsPerWord; j += 4) {
        const int d = (c * 4 + wi) * kDimsPerWord + j;
        const float c0 = CodeToFloat<KB>(words[wi], j), c1 = CodeToFloat<KB>(words[wi], j + 1);
        const float c2 = CodeToFloat<KB>(words[wi], j + 2), c3 = CodeToFloat<KB>(words[wi], j + 3);
#pragma unroll
        for (int h = 0; h < kMaxGroup; ++h) {
          if (h < nh) {
            const float4 qv = *reinterpret_cast<const float4*>(qs + h * D + d);
            s[h] = fmaf(qv.x, c0, fmaf(qv.y, c1, fmaf(qv.z, c2, fmaf(qv.w, c3, s[h]))));
          }
        }
      }
    }
  }
}

// s[h] += qs[h, :] . fp16 row.
template <int D>
__device__ __forceinline__ void DotHalf(const uint16_t* row, const float* qs, int nh, float (&s)[kMaxGroup]) {
#pragma unroll
  for (int c = 0; c < D / 8; ++c) {
    const uint4 u = LoadStream(row + 8 * c);
    const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int wi = 0; wi < 4; wi += 2) {
      const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&words[wi]));
      const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&words[wi + 1]));
      const int d = c * 8 + wi * 2;
#pragma unroll
      for (int h = 0; h < kMaxGroup; ++h) {
        if (h < nh) {
          const float4 qv = *reinterpret_cast<const float4*>(qs + h * D + d);
          s[h] = fmaf(qv.x, a.x, fmaf(qv.y, a.y, fmaf(qv.z, b.x, fmaf(qv.w, b.y, s[h]))));
        }
      }
    }
  }
}

// s[h] += qs[h, :] . fp32 row.
template <int D>
__device__ __forceinline__ void DotFloat(const float* row, const float* qs, int nh, float (&s)[kMaxGroup]) {
#pragma unroll 8
  for (int d = 0; d < D; d += 4) {
    const float4 k = __ldg(reinterpret_cast<const float4*>(row + d));
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) {
      if (h < nh) {
        const float4 qv = *reinterpret_cast<const float4*>(qs + h * D + d);
        s[h] = fmaf(qv.x, k.x, fmaf(qv.y, k.y, fmaf(qv.z, k.z, fmaf(qv.w, k.w, s[h]))));
      }
    }
  }
}

// The lane's D/32 channels of V row t.
// row: the token's packed codes; scale/min: the token's D/32 fp16 params.
template <int D, int VB>
__device__ __forceinline__ void LoadVPacked(const uint8_t* row, const uint16_t* scale, const uint16_t* min,
                                            int lane, float (&v)[D / 32]) {
  constexpr int kDpl = D / 32;
  const int bit = lane * kDpl * VB;
  const uint32_t word = reinterpret_cast<const uint32_t*>(row)[bit / 32] >> (bit % 32);
  const int g = lane * kDpl / 32;
  const float s = HalfBitsToFloat(scale[g]);
  const float m = HalfBitsToFloat(min[g]);
#pragma unroll
  for (int j = 0; j < kDpl; ++j) v[j] = fmaf(CodeToFloat<VB>(word, j), s, m);
}

template <int D>
__device__ __forceinline__ void LoadVHalf(const uint16_t* row, int lane, float (&v)[D / 32]) {
  const uint16_t* p = row + lane * (D / 32);
  if constexpr (D == 128) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
    v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
  } else {
    const uint32_t u = *reinterpret_cast<const uint32_t*>(p);
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u));
    v[0] = a.x; v[1] = a.y;
  }
}

template <int D>
__device__ __forceinline__ void LoadVFloat(const float* rows, int64_t tok, int lane, float (&v)[D / 32]) {
  const float* p = rows + tok * D + lane * (D / 32);
  if constexpr (D == 128) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
  } else {
    const float2 a = __ldg(reinterpret_cast<const float2*>(p));
    v[0] = a.x; v[1] = a.y;
  }
}

// Running softmax state of one warp for up to 8 heads.
template <int D>
struct WarpState {
  float m[kMaxGroup];
  float l[kMaxGroup];  // per lane partial sums (same rescaling on every lane)
  float acc[kMaxGroup][D / 32];
};

// Online-softmax update with the unit's scores; p goes to p_s[lane][h].
template <int D>
__device__ __forceinline__ void SoftmaxUpdate(WarpState<D>& st, float (&s)[kMaxGroup], int n, int nh, int lane,
                                              float (*p_s)[kMaxGroup]) {
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    if (h < nh) {
      const float sh = lane < n ? s[h] : -INFINITY;
      const float mnew = fmaxf(st.m[h], WarpMax(sh));
      const float corr = __expf(st.m[h] - mnew);
      const float pv = lane < n ? __expf(sh - mnew) : 0.0f;
      st.l[h] = st.l[h] * corr + pv;
#pragma unroll
      for (int j = 0; j < D / 32; ++j) st.acc[h][j] *= corr;
      st.m[h] = mnew;
      p_s[lane][h] = pv;
    }
  }
  __syncwarp();
}

template <int D>
__device__ __forceinline__ void Accumulate(WarpState<D>& st, const float (&v)[D / 32], const float* p, int nh) {
  const float4 pa = *reinterpret_cast<const float4*>(p);
  const float4 pb = *reinterpret_cast<const float4*>(p + 4);
  const float pr[kMaxGroup] = {pa.x, pa.y, pa.z, pa.w, pb.x, pb.y, pb.z, pb.w};
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    if (h < nh) {
#pragma unroll
      for (int j = 0; j < D / 32; ++j) st.acc[h][j] = fmaf(pr[h], v[j], st.acc[h][j]);
    }
  }
}

// grid (splits, num_kv_heads * head_chunks, items), block 128.
template <int D, int KB, int VB>
__global__ void __launch_bounds__(kWarps * 32) AttentionKernel(const AttentionParams p) {
  constexpr int kDpl = D / 32;
  __shared__ __align__(16) float q_s[kMaxGroup * D];            // q * 1/sqrt(D)
  __shared__ __align__(16) float warp_buf[kWarps][kMaxGroup * D];  // q o scale per K group; then merge
  __shared__ __align__(16) float p_s[kWarps][32][kMaxGroup];
  __shared__ float ml_s[kWarps][kMaxGroup][2];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = p.num_heads / p.num_kv_heads, head_chunks = (group + kMaxGroup - 1) / kMaxGroup;
  const int split = blockIdx.x, item = blockIdx.z;
  const int hk = blockIdx.y / head_chunks, hc = blockIdx.y % head_chunks;
  const int h0 = hk * group + hc * kMaxGroup, nh = min(kMaxGroup, group - hc * kMaxGroup);
  const HeadCacheView hv = p.heads[static_cast<int64_t>(item) * p.num_kv_heads + hk];
  const int tail = p.tail_len ? p.tail_len[item] : 0;
  const float scale = rsqrtf(static_cast<float>(D));

  for (int e = threadIdx.x; e < nh * D; e += blockDim.x) {
    q_s[e] = p.q[item * p.q_item_stride + (h0 + e / D) * p.q_head_stride + e % D] * scale;
  }
  __syncthreads();

  const int nb0 = (hv.initial_kept + 31) / 32;
  const int n_qu = nb0 + (hv.n_quant - hv.initial_kept) / 32;
  const int n_wu = (hv.n_window + 31) / 32, n_ru = (hv.n_residual + 31) / 32;
  const int units = n_qu + n_wu + n_ru + (tail + 31) / 32;
  const int ups = (p.max_units + p.splits - 1) / p.splits;
  const int u_begin = split * ups, u_end = min(units, u_begin + ups);

  WarpState<D> st;
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    st.m[h] = -INFINITY;
    st.l[h] = 0.0f;
#pragma unroll
    for (int j = 0; j < kDpl; ++j) st.acc[h][j] = 0.0f;
  }
  float* qs_w = warp_buf[warp];
  float(*pw)[kMaxGroup] = p_s[warp];
  extern __shared__ __align__(16) uint8_t dyn_smem[];
  uint8_t* warp_smem = dyn_smem + warp * Staging<D, KB, VB>::kWarpBytes;

  for (int u = u_begin + warp; u < u_end; u += kWarps) {
    float s[kMaxGroup];
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) s[h] = 0.0f;
    if (u < n_qu) {
      using St = Staging<D, KB, VB>;
      const int tok0 = u < nb0 ? u * 32 : hv.initial_kept + (u - nb0) * 32;
      const int n = u < nb0 ? min(32, hv.initial_kept - tok0) : 32;
      uint8_t* k_rows = warp_smem;
      uint8_t* v_rows = k_rows + 32 * St::kStrideK;
      uint16_t* k_par = reinterpret_cast<uint16_t*>(v_rows + 32 * St::kStrideV);
      uint16_t* v_par = k_par + St::kKParBytes / 2;
      // Stage the unit: every copy of the warp in flight at once.
      {
        constexpr int kChK = St::kRowK / 16, kChV = St::kRowV / 16;
        const uint8_t* kg = hv.k_codes + static_cast<int64_t>(tok0) * St::kRowK;
        const uint8_t* vg = hv.v_codes + static_cast<int64_t>(tok0) * St::kRowV;
        for (int c = lane; c < n * kChK; c += 32) {
          CpAsync16(k_rows + (c / kChK) * St::kStrideK + (c % kChK) * 16, kg + c * 16);
        }
        for (int c = lane; c < n * kChV; c += 32) {
          CpAsync16(v_rows + (c / kChV) * St::kStrideV + (c % kChV) * 16, vg + c * 16);
        }
        if constexpr (KB < 16) {
          for (int c = lane; c < D / 8; c += 32) {
            CpAsync16(k_par + c * 8, hv.k_scale + static_cast<int64_t>(u) * D + c * 8);
            CpAsync16(k_par + D + c * 8, hv.k_min + static_cast<int64_t>(u) * D + c * 8);
          }
        }
      }
      if constexpr (VB < 16) {
        // V params are not 16-byte aligned for flushed groups: plain loads, lane = token.
        constexpr int kG = D / 32;
        uint16_t vs[kG], vm[kG];
        if (lane < n) {
#pragma unroll
          for (int g = 0; g < kG; ++g) {
            vs[g] = hv.v_scale[static_cast<int64_t>(tok0 + lane) * kG + g];
            vm[g] = hv.v_min[static_cast<int64_t>(tok0 + lane) * kG + g];
          }
        }
        CpAsyncWaitAll();
        if (lane < n) {
#pragma unroll
          for (int g = 0; g < kG; ++g) {
            v_par[lane * kG + g] = vs[g];
            v_par[32 * kG + lane * kG + g] = vm[g];
          }
        }
      } else {
        CpAsyncWaitAll();
      }
      __syncwarp();
      if constexpr (KB < 16) {
        float qm[kMaxGroup];
#pragma unroll
        for (int h = 0; h < kMaxGroup; ++h) qm[h] = 0.0f;
#pragma unroll
        for (int i = 0; i < kDpl; ++i) {
          const int d = lane + 32 * i;
          const float sc = HalfBitsToFloat(k_par[d]), mn = HalfBitsToFloat(k_par[D + d]);
#pragma unroll
          for (int h = 0; h < kMaxGroup; ++h) {
            if (h < nh) {
              const float qv = q_s[h * D + d];
              qs_w[h * D + d] = qv * sc;
              qm[h] = fmaf(qv, mn, qm[h]);
            }
          }
        }
#pragma unroll
        for (int h = 0; h < kMaxGroup; ++h) {
          if (h < nh) qm[h] = WarpSum(qm[h]);
        }
        __syncwarp();
        if (lane < n) {
          DotPacked<D, KB>(k_rows + lane * St::kStrideK, qs_w, nh, s);
#pragma unroll
          for (int h = 0; h < kMaxGroup; ++h) s[h] += qm[h];
        }
      } else {
        if (lane < n) DotHalf<D>(reinterpret_cast<const uint16_t*>(k_rows + lane * St::kStrideK), q_s, nh, s);
      }
      SoftmaxUpdate<D>(st, s, n, nh, lane, pw);
#pragma unroll 4
      for (int t = 0; t < n; ++t) {
        float v[kDpl];
        if constexpr (VB < 16) {
          LoadVPacked<D, VB>(v_rows + t * St::kStrideV, v_par + t * (D / 32), v_par + 32 * (D / 32) + t * (D / 32),
                             lane, v);
        } else {
          LoadVHalf<D>(reinterpret_cast<const uint16_t*>(v_rows + t * St::kStrideV), lane, v);
        }
        Accumulate<D>(st, v, pw[t], nh);
      }
    } else if (u < n_qu + n_wu + n_ru) {
      const bool window = u < n_qu + n_wu;
      const int tok0 = (window ? u - n_qu : u - n_qu - n_wu) * 32;
      const int n = min(32, (window ? hv.n_window : hv.n_residual) - tok0);
      const uint16_t* kr = window ? hv.window_k : hv.residual_k;
      const uint16_t* vr = window ? hv.window_v : hv.residual_v;
      if (lane < n) DotHalf<D>(kr + static_cast<int64_t>(tok0 + lane) * D, q_s, nh, s);
      SoftmaxUpdate<D>(st, s, n, nh, lane, pw);
#pragma unroll 4
      for (int t = 0; t < n; ++t) {
        float v[kDpl];
        LoadVHalf<D>(vr + static_cast<int64_t>(tok0 + t) * D, lane, v);
        Accumulate<D>(st, v, pw[t], nh);
      }
    } else {
      const int tok0 = (u - n_qu - n_wu - n_ru) * 32;
      const int n = min(32, tail - tok0);
      const float* kr = p.tail_k + hk * p.tail_head_stride;
      const float* vr = p.tail_v + hk * p.tail_head_stride;
      if (lane < n) DotFloat<D>(kr + static_cast<int64_t>(tok0 + lane) * D, q_s, nh, s);
      SoftmaxUpdate<D>(st, s, n, nh, lane, pw);
#pragma unroll 4
      for (int t = 0; t < n; ++t) {
        float v[kDpl];
        LoadVFloat<D>(vr, tok0 + t, lane, v);
        Accumulate<D>(st, v, pw[t], nh);
      }
    }
    __syncwarp();
  }

  // Merge the warps of the block.
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    if (h < nh) {
      const float l = WarpSum(st.l[h]);
      if (lane == 0) {
        ml_s[warp][h][0] = st.m[h];
        ml_s[warp][h][1] = l;
      }
#pragma unroll
      for (int j = 0; j < kDpl; ++j) qs_w[h * D + lane * kDpl + j] = st.acc[h][j];
    }
  }
  __syncthreads();
  float* part_o = p.workspace;
  float* part_ml = p.workspace + static_cast<int64_t>(p.items) * p.num_heads * p.splits * D;
  for (int e = threadIdx.x; e < nh * D; e += blockDim.x) {
    const int h = e / D, d = e % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, ml_s[w][h][0]);
    float o = 0.0f, l = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = __expf(ml_s[w][h][0] - mx);
        o += f * warp_buf[w][h * D + d];
        l += f * ml_s[w][h][1];
      }
    }
    const int64_t slot = (static_cast<int64_t>(item) * p.num_heads + h0 + h) * p.splits + split;
    part_o[slot * D + d] = o;
    if (d == 0) {
      part_ml[2 * slot] = mx;
      part_ml[2 * slot + 1] = l;
    }
  }
}

}  // namespace attention_detail

// Launches AttentionKernel<D, KB, VB> for run-time D and VB; one definition
// per KB lives in attention_kb<KB>.cu so the instantiations compile in parallel.
template <int KB>
cudaError_t LaunchAttentionKernel(const AttentionParams& p, dim3 grid, cudaStream_t s);
template <>
cudaError_t LaunchAttentionKernel<2>(const AttentionParams& p, dim3 grid, cudaStream_t s);
template <>
cudaError_t LaunchAttentionKernel<4>(const AttentionParams& p, dim3 grid, cudaStream_t s);
template <>
cudaError_t LaunchAttentionKernel<8>(const AttentionParams& p, dim3 grid, cudaStream_t s);
template <>
cudaError_t LaunchAttentionKernel<16>(const AttentionParams& p, dim3 grid, cudaStream_t s);

#define MOEND_DEFINE_ATTENTION_LAUNCH(KB)                                                        \
  template <>                                                                                    \
  cudaError_t LaunchAttentionKernel<KB>(const AttentionParams& p, dim3 grid, cudaStream_t s) {   \
    return DispatchHeadDim(p.head_dim, [&](auto d) {                                             \
      return DispatchBits(p.vbits, [&](auto vb) {                                                \
        constexpr int kD = decltype(d)::value, kVB = decltype(vb)::value;                        \
        constexpr int kSmem = attention_detail::Staging<kD, KB, kVB>::kBlockBytes;               \
        auto* kernel = attention_detail::AttentionKernel<kD, KB, kVB>;                           \
        /* static + dynamic shared memory may exceed the default 48 KB */                        \
        const cudaError_t e =                                                                    \
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);    \
        if (e != cudaSuccess) return e;                                                          \
        kernel<<<grid, attention_detail::kWarps * 32, kSmem, s>>>(p);                            \
        return cudaGetLastError();                                                               \
      });                                                                                        \
    });                                                                                          \
  }

}  // namespace moend::kernels::cuda

#endif  // MOEND_KERNELS_CUDA_ATTENTION_KERNEL_CUH_

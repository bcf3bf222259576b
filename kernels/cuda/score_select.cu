// SnapKV eviction scores and per-head top-m selection (DESIGN.md section 2).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/launch.h"

namespace moend::kernels::cuda {
namespace {

constexpr int kKeyTile = 32;

// Logits of the window queries: L[hq, i, j] = q_i . k_j / sqrt(D) for keys j
// in [0, c); -inf where j > c - w + i (causal). grid (ceil(c/32), Hq), block 256.
template <int D>
__global__ void __launch_bounds__(256) LogitsKernel(const ScoreParams p, float* logits) {
  __shared__ float qs[32][D];
  __shared__ float ks[kKeyTile][D + 1];
  const int hq = blockIdx.y, group = p.num_heads / p.num_kv_heads, hk = hq / group;
  const int j0 = blockIdx.x * kKeyTile, c = p.prefix, w = p.window;
  for (int e = threadIdx.x; e < w * D; e += blockDim.x) {
    qs[e / D][e % D] = p.q[(static_cast<int64_t>(hq) * w) * D + e];
  }
  for (int e = threadIdx.x; e < kKeyTile * D; e += blockDim.x) {
    const int jj = e / D, j = j0 + jj;
    ks[jj][e % D] = j < c ? p.k[hk * p.k_head_stride + static_cast<int64_t>(j) * D + e % D] : 0.0f;
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, j = j0 + lane;
  const float scale = rsqrtf(static_cast<float>(D));
  for (int i = warp; i < w; i += 8) {
    float acc = 0.0f;
#pragma unroll 16
    for (int d = 0; d < D; ++d) acc = fmaf(qs[i][d], ks[lane][d], acc);
    if (j < c) {
      logits[(static_cast<int64_t>(hq) * w + i) * c + j] = j <= c - w + i ? acc * scale : -INFINITY;
    }
  }
}

// Row max and 1/sum(exp) over the valid keys. grid (Hq*w), block 256.
__global__ void RowStatsKernel(const ScoreParams p, const float* logits, float2* stats) {
  __shared__ float red[32];
  const int r = blockIdx.x, i = r % p.window, c = p.prefix;
  const int valid = c - p.window + i + 1;
  const float* row = logits + static_cast<int64_t>(r) * c;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < valid; j += blockDim.x) mx = fmaxf(mx, row[j]);
  mx = WarpMax(mx);
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = lane < nw ? red[lane] : -INFINITY;
  mx = WarpMax(mx);
  __syncthreads();
  float sum = 0.0f;
  for (int j = threadIdx.x; j < valid; j += blockDim.x) sum += expf(row[j] - mx);
  sum = WarpSum(sum);
  if (lane == 0) red[warp] = sum;
  __syncthreads();
  sum = lane < nw ? red[lane] : 0.0f;
  sum = WarpSum(sum);
  if (threadIdx.x == 0) stats[r] = make_float2(mx, 1.0f / sum);
}

// Raw score: sum of probabilities over the group's heads and window queries.
// grid (ceil(cand/256), H), block 256.
__global__ void CandidateKernel(const ScoreParams p, const float* logits, const float2* stats, float* raw) {
  const int h = blockIdx.y, j = blockIdx.x * blockDim.x + threadIdx.x;
  const int c = p.prefix, w = p.window, cand = c - w, group = p.num_heads / p.num_kv_heads;
  if (j >= cand) return;
  float s = 0.0f;
  for (int r = h * group * w; r < (h + 1) * group * w; ++r) {
    const float2 st = stats[r];
    s += expf(logits[static_cast<int64_t>(r) * c + j] - st.x) * st.y;
  }
  raw[static_cast<int64_t>(h) * cand + j] = s;
}

// Average pool, kernel 7, padding 3 not counted. grid (ceil(cand/256), H).
__global__ void PoolKernel(const ScoreParams p, const float* raw) {
  const int h = blockIdx.y, j = blockIdx.x * blockDim.x + threadIdx.x, cand = p.prefix - p.window;
  if (j >= cand) return;
  const float* r = raw + static_cast<int64_t>(h) * cand;
  const int lo = max(0, j - 3), hi = min(cand - 1, j + 3);
  float s = 0.0f;
  for (int t = lo; t <= hi; ++t) s += r[t];
  p.scores[static_cast<int64_t>(h) * cand + j] = s / static_cast<float>(hi - lo + 1);
}

// Exclusive prefix sum over the block; *total gets the block's sum.
__device__ int BlockExclusiveScan(int v, int* total, int* smem) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  int x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) smem[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int t = lane < nw ? smem[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, t, o);
      if (lane >= o) t += y;
    }
    smem[lane] = t;
  }
  __syncthreads();
  const int excl = (warp > 0 ? smem[warp - 1] : 0) + x - v;
  *total = smem[nw - 1];
  __syncthreads();
  return excl;
}

// Top-m by (score desc, index asc), written in ascending index order: a
// 4-pass radix select of the m-th largest key, then an ordered compaction.
// grid (H), block 1024.
__global__ void __launch_bounds__(1024) SelectKernel(const SelectParams p) {
  __shared__ unsigned hist[256];
  __shared__ unsigned sh_prefix, sh_mask, sh_remaining;
  __shared__ int scan_smem[32];
  const int h = blockIdx.x, cand = p.candidates, m = p.kept;
  if (m == 0) return;
  const unsigned* key = reinterpret_cast<const unsigned*>(p.scores + static_cast<int64_t>(h) * cand);
  if (threadIdx.x == 0) {
    sh_prefix = 0;
    sh_mask = 0;
    sh_remaining = static_cast<unsigned>(m);
  }
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    const unsigned prefix = sh_prefix, mask = sh_mask;
    for (int j = threadIdx.x; j < cand; j += blockDim.x) {
      const unsigned k = key[j];
      if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned rem = sh_remaining;
      for (int dgt = 255; dgt >= 0; --dgt) {
        if (hist[dgt] >= rem) {
          sh_prefix = prefix | (static_cast<unsigned>(dgt) << shift);
          sh_mask = mask | (255u << shift);
          sh_remaining = rem;
          break;
        }
        rem -= hist[dgt];
      }
    }
    __syncthreads();
  }
  const unsigned threshold = sh_prefix;
  const int need_equal = static_cast<int>(sh_remaining);
  int32_t* out = p.index + static_cast<int64_t>(h) * m;
  int taken_equal = 0, written = 0;
  for (int base = 0; base < cand && written < m; base += blockDim.x) {
    const int j = base + threadIdx.x;
    const unsigned k = j < cand ? key[j] : 0u;
    const int gt = j < cand && k > threshold;
    const int eq = j < cand && k == threshold;
    int eq_total, take_total;
    const int eq_rank = BlockExclusiveScan(eq, &eq_total, scan_smem);
    const int take = gt || (eq && taken_equal + eq_rank < need_equal);
    const int pos = BlockExclusiveScan(take, &take_total, scan_smem);
    if (take) out[written + pos] = j;
    taken_equal += eq_total;
    written += take_total;
  }
}

}  // namespace

int64_t ScoreWorkspaceFloats(int num_heads, int num_kv_heads, int window, int prefix) {
  const int64_t cand = prefix - window;
  return static_cast<int64_t>(num_heads) * window * prefix +  // logits
         2 * static_cast<int64_t>(num_heads) * window +       // row stats
         static_cast<int64_t>(num_kv_heads) * cand;           // raw scores
}

int LaunchScores(const ScoreParams& p, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int cand = p.prefix - p.window;
  if (cand <= 0) return cudaSuccess;
  float* logits = p.workspace;
  float2* stats = reinterpret_cast<float2*>(logits + static_cast<int64_t>(p.num_heads) * p.window * p.prefix);
  float* raw = reinterpret_cast<float*>(stats + static_cast<int64_t>(p.num_heads) * p.window);
  cudaError_t e = DispatchHeadDim(p.head_dim, [&](auto d) {
    LogitsKernel<decltype(d)::value><<<dim3(CeilDiv(p.prefix, kKeyTile), p.num_heads), 256, 0, s>>>(p, logits);
    return cudaGetLastError();
  });
  if (e != cudaSuccess) return e;
  RowStatsKernel<<<p.num_heads * p.window, 256, 0, s>>>(p, logits, stats);
  CandidateKernel<<<dim3(CeilDiv(cand, 256), p.num_kv_heads), 256, 0, s>>>(p, logits, stats, raw);
  PoolKernel<<<dim3(CeilDiv(cand, 256), p.num_kv_heads), 256, 0, s>>>(p, raw);
  return cudaGetLastError();
}

int LaunchSelect(const SelectParams& p, void* stream) {
  if (p.kept <= 0) return cudaSuccess;
  SelectKernel<<<p.num_kv_heads, 1024, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return cudaGetLastError();
}

}  // namespace moend::kernels::cuda

// Launchers of the CUDA kernels over device pointers, one params struct per
// kernel. Plain types only (fp16 travels as uint16_t), so that host code can
// include this without CUDA headers. Each launcher returns a cudaError_t as
// int (0 = success); kernels/cuda/cuda_backend.cc turns it into a Status.
#ifndef MOEND_KERNELS_CUDA_LAUNCH_H_
#define MOEND_KERNELS_CUDA_LAUNCH_H_

#include <cstdint>

namespace moend::kernels::cuda {

// ---------------------------------------------------------------- scoring --
struct ScoreParams {
  const float* q = nullptr;   // [num_heads, window, D] the window queries, contiguous
  const float* k = nullptr;   // [num_kv_heads, k_head_stride floats]; rows [0, prefix) read
  int64_t k_head_stride = 0;  // floats between KV heads of k
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;           // 64 or 128
  int prefix = 0;             // c
  int window = 0;             // min(c, 32)
  float* workspace = nullptr; // ScoreWorkspaceFloats() floats
  float* scores = nullptr;    // [num_kv_heads, c - window] smoothed scores
};
int64_t ScoreWorkspaceFloats(int num_heads, int num_kv_heads, int window, int prefix);
int LaunchScores(const ScoreParams& p, void* stream);

struct SelectParams {
  const float* scores = nullptr;  // [num_kv_heads, candidates], all >= 0
  int num_kv_heads = 0;
  int candidates = 0;
  int kept = 0;                   // m in [0, candidates]
  int32_t* index = nullptr;       // [num_kv_heads, kept] ascending
};
int LaunchSelect(const SelectParams& p, void* stream);

// ----------------------------------------------------------- quantization --
struct QuantizeParams {
  const float* k = nullptr;        // [num_kv_heads, head_stride floats]
  const float* v = nullptr;        // [num_kv_heads, head_stride floats]
  int64_t head_stride = 0;         // floats between KV heads of k and v
  const int32_t* index = nullptr;  // [num_kv_heads, kept] token rows to keep
  int num_kv_heads = 0;
  int head_dim = 0;
  int kept = 0;                    // m
  int prefix = 0;                  // c
  int window = 0;                  // min(c, 32)
  int kbits = 16;
  int vbits = 16;
  uint8_t* k_codes = nullptr;      // [num_kv_heads, kept, D*kbits/8]
  uint16_t* k_scale = nullptr;     // [num_kv_heads, ceil(kept/32), D] (kbits < 16)
  uint16_t* k_min = nullptr;
  uint8_t* v_codes = nullptr;      // [num_kv_heads, kept, D*vbits/8]
  uint16_t* v_scale = nullptr;     // [num_kv_heads, kept, D/32] (vbits < 16)
  uint16_t* v_min = nullptr;
  uint16_t* window_k = nullptr;    // [num_kv_heads, window, D]
  uint16_t* window_v = nullptr;
};
int LaunchQuantize(const QuantizeParams& p, void* stream);

// -------------------------------------------------------------- attention --
// The work partition of the attention kernel. Pure host logic (defined in
// kernels/cuda/decode_plan.cc, built without CUDA too); the kernel reads its
// split's unit range through SplitUnitRange.
// Kernel constants the partition depends on (kernels/cuda/attention.cu
// static_asserts that the kernel's own equal these).
inline constexpr int kAttentionWarps = 4;     // warps per block: a split gets >= 4 units when it can
inline constexpr int kAttentionMaxGroup = 8;  // query heads per block (the mma's N)
inline constexpr int kAttentionMaxItems = 65535;  // grid.z

// What the split count depends on besides the work.
struct SplitPolicy {
  int sm_count = 132;         // multiprocessors of the device (kernels/cuda/cuda_util.h SmCount())
  int waves = 0;              // MOEND_ATTENTION_WAVES: 0 = about 8 blocks per SM, W > 0 = W waves
  int min_blocks_per_sm = 3;  // MOEND_ATTENTION_MIN_BLOCKS (used when waves > 0)
};

// Split-K factor of one launch: about 8 blocks per SM (or `waves` full
// waves), at most max_units / kAttentionWarps, at least 1.
int SplitsFor(int items, int num_heads, int num_kv_heads, int max_units, const SplitPolicy& policy);
// This device's policy: SmCount() and the compiled-in MOEND_ATTENTION_WAVES /
// MOEND_ATTENTION_MIN_BLOCKS (kernels/cuda/attention.cu; CUDA builds only).
SplitPolicy DeviceSplitPolicy();

// Units [begin, end) of a head with `units` units that split `split` of
// `splits` walks when the launch's largest head has `max_units` units (the
// kernel's partition: ceil(max_units / splits) units per split). end <=
// begin means none.
struct UnitRange {
  int begin = 0, end = 0;
};
#if defined(__CUDACC__)
__host__ __device__
#endif
inline UnitRange SplitUnitRange(int units, int max_units, int splits, int split) {
  const int per = (max_units + splits - 1) / splits;
  const int begin = split * per;
  const int end = units < begin + per ? units : begin + per;
  return {begin, end};
}

// One (sequence, KV head) of a compressed cache in device memory.
struct HeadCacheView {
  const uint8_t* k_codes = nullptr;      // [n_quant, D*kbits/8] (kbits 16: fp16 rows)
  const uint16_t* k_scale = nullptr;     // [key_groups, D]
  const uint16_t* k_min = nullptr;
  const uint8_t* v_codes = nullptr;      // [n_quant, D*vbits/8]
  const uint16_t* v_scale = nullptr;     // [n_quant, D/32]
  const uint16_t* v_min = nullptr;
  const uint16_t* window_k = nullptr;    // [n_window, D]
  const uint16_t* window_v = nullptr;
  const uint16_t* residual_k = nullptr;  // [n_residual, D]
  const uint16_t* residual_v = nullptr;
  int32_t initial_kept = 0;  // K groups of 32 over [0, initial_kept), then full groups
  int32_t n_quant = 0;
  int32_t n_window = 0;
  int32_t n_residual = 0;
};

// Units of <= 32 tokens the attention kernel walks for one head (defined in
// kernels/cuda/decode_plan.cc, built without CUDA too).
int AttentionUnits(const HeadCacheView& h, int tail_len);

struct AttentionParams {
  const HeadCacheView* heads = nullptr;  // device [items, num_kv_heads]
  const float* q = nullptr;              // q(item, head) at q + item*q_item_stride + head*q_head_stride
  int64_t q_item_stride = 0;
  int64_t q_head_stride = 0;
  float* out = nullptr;                  // same addressing with the out strides
  int64_t out_item_stride = 0;
  int64_t out_head_stride = 0;
  const float* tail_k = nullptr;         // optional uncompressed fp32 keys shared by all items:
  const float* tail_v = nullptr;         //   [num_kv_heads, tail_head_stride floats]
  int64_t tail_head_stride = 0;
  const int32_t* tail_len = nullptr;     // device [items]: tail rows item sees (null: none)
  int items = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;                      // 64 or 128
  int kbits = 16;
  int vbits = 16;
  int max_units = 0;                     // max AttentionUnits over items and heads
  int splits = 1;                        // from AttentionSplits()
  float* workspace = nullptr;            // AttentionWorkspaceFloats() floats
};
// Split-K factor for the given work: SplitsFor (kernels/cuda/decode_plan.h)
// with the device's multiprocessor count and the compiled-in variant.
int AttentionSplits(int items, int num_heads, int num_kv_heads, int max_units);
// Defined in kernels/cuda/decode_plan.cc (built without CUDA too).
int64_t AttentionWorkspaceFloats(int items, int num_heads, int head_dim, int splits);
int LaunchAttention(const AttentionParams& p, void* stream);

// ------------------------------------------------------- test/bench helpers --
// Deterministic pseudo-random fills (hash of seed and index).
int LaunchFillBytes(uint8_t* p, int64_t n, uint64_t seed, void* stream);
int LaunchFillHalf(uint16_t* p, int64_t n, float lo, float hi, uint64_t seed, void* stream);
int LaunchFillFloat(float* p, int64_t n, float lo, float hi, uint64_t seed, void* stream);

}  // namespace moend::kernels::cuda

#endif  // MOEND_KERNELS_CUDA_LAUNCH_H_

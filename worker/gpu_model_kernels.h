// Element-wise and row kernels of the GPU forward pass (worker/gpu_model.h);
// the matrix products are cuBLAS calls in worker/gpu_model.cc. Each mirrors a
// step of runtime/model.cc in float32; the BF16 forward's variants round their
// output (and only it) to BF16 by round-to-nearest-even. Plain types only, so
// that host code includes this without CUDA headers (BF16 values are their
// uint16_t bits); each launcher returns a cudaError_t as int (0 = success).
#ifndef MOEND_WORKER_GPU_MODEL_KERNELS_H_
#define MOEND_WORKER_GPU_MODEL_KERNELS_H_

#include <cstdint>

namespace moend::worker::gpumodel {

// x [n, hidden] = rows tokens[t] of embed [vocab, hidden] (ids validated).
int LaunchEmbed(const int32_t* tokens, const float* embed, int64_t n, int hidden, float* x, void* stream);
int LaunchEmbedBf16(const int32_t* tokens, const uint16_t* embed, int64_t n, int hidden, float* x, void* stream);

// out [n, hidden] = weight * (x * 1 / sqrt(mean(x^2) + eps)) per row.
int LaunchRmsNorm(const float* x, const float* weight, int64_t n, int hidden, float eps, float* out,
                  void* stream);
int LaunchRmsNormBf16(const float* x, const float* weight, int64_t n, int hidden, float eps, uint16_t* out,
                      void* stream);

// out[i] = bf16(in[i]) for i < count.
int LaunchFloatToBf16(const float* in, int64_t count, uint16_t* out, void* stream);

// From qkv [n, (H + 2 Hkv) * D] (token-major, q heads then k heads then v
// heads): adds bias [(H + 2 Hkv) * D] (may be null), applies rotate-half RoPE
// at positions 0..n-1 with inv_freq [D / 2] to the q and k heads, and writes
// q [H, n, D], k [Hkv, n, D], v [Hkv, n, D]; with q16/k16/v16 set, also their
// BF16 copies in the same layouts.
struct RopeParams {
  const float* qkv = nullptr;
  const float* bias = nullptr;
  const float* inv_freq = nullptr;
  int64_t tokens = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // even
  float* q = nullptr;
  float* k = nullptr;
  float* v = nullptr;
  uint16_t* q16 = nullptr;  // all three or none
  uint16_t* k16 = nullptr;
  uint16_t* v16 = nullptr;
};
int LaunchRope(const RopeParams& p, void* stream);

// Causal softmax over a block of score rows, in place: s [rows, keys]
// row-major; row r is query q0 + r and sees keys [0, q0 + r] (q0 + rows <=
// keys): s = softmax over those, 0 after them.
int LaunchCausalSoftmax(float* s, int64_t rows, int64_t keys, int64_t q0, void* stream);

// The same over the score rows of `heads` query heads stacked, s [heads * rows,
// keys] (row j * rows + r is query q0 + r of head j), written as BF16 P of the
// same shape (`p` may not alias `s`): softmax over keys [0, q0 + r], 0 after.
int LaunchCausalSoftmaxBf16(const float* s, int64_t heads, int64_t rows, int64_t keys, int64_t q0, uint16_t* p,
                            void* stream);

// In place per token: gu [n, 2 I] (gate columns then up columns);
// gate = silu(gate) * up.
int LaunchSiluMul(float* gu, int64_t n, int intermediate, void* stream);
// out [n, I] = bf16(silu(gate) * up) of gu [n, 2 I].
int LaunchSiluMulBf16(const float* gu, int64_t n, int intermediate, uint16_t* out, void* stream);

}  // namespace moend::worker::gpumodel

#endif  // MOEND_WORKER_GPU_MODEL_KERNELS_H_

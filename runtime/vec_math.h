// Small vectorizable float kernels for the CPU forward pass.
#ifndef MOEND_RUNTIME_VEC_MATH_H_
#define MOEND_RUNTIME_VEC_MATH_H_

#include <cstdint>

namespace moend {

struct ExpRowResult {
  float max = 0;  // max of the input s[0, len)
  float sum = 0;  // sum of exp(s[j] - max)
};

// In place: s[0, len) = exp(s - max(s[0, len))); s[len, total) = 0. The
// unnormalized half of a softmax, for callers that merge partial softmaxes.
// len >= 1.
ExpRowResult ExpRow(float* s, int64_t len, int64_t total);

// In place: s[0, len) = softmax(s[0, len)); s[len, total) = 0. Uses a
// polynomial exp accurate to ~2 ulp (float32), branch-free so it vectorizes.
void SoftmaxRow(float* s, int64_t len, int64_t total);

// In place over [0, n): gate[i] = silu(gate[i]) * up[i].
void SiluMul(float* gate, const float* up, int64_t n);

}  // namespace moend

#endif  // MOEND_RUNTIME_VEC_MATH_H_

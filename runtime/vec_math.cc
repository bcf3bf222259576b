#include "runtime/vec_math.h"

#include <algorithm>
#include <bit>
#include <cstdint>

// Multiversioned for the wide vector units when the compiler supports it; the
// loader picks the best clone for the running CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MOEND_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MOEND_VECTOR_CLONES
#endif

namespace moend {
namespace {

// exp(x) for x in [-87, 88]: x = n ln2 + r, |r| <= ln2/2, exp(r) by the Cephes
// degree-6 polynomial, 2^n by building the exponent bits.
inline float ExpPoly(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  return y * std::bit_cast<float>(e);
}

}  // namespace

MOEND_VECTOR_CLONES
ExpRowResult ExpRow(float* s, int64_t len, int64_t total) {
  // Reductions in kLanes independent partials so the compiler can vectorize
  // them without reassociating a single accumulator.
  constexpr int kLanes = 16;
  float part[kLanes];
  std::fill(part, part + kLanes, s[0]);
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) part[k] = std::max(part[k], s[j + k]);
  }
  float mx = s[0];
  for (int k = 0; k < kLanes; ++k) mx = std::max(mx, part[k]);
  for (; j < len; ++j) mx = std::max(mx, s[j]);

  std::fill(part, part + kLanes, 0.0f);
  j = 0;
  for (; j + kLanes <= len; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      s[j + k] = ExpPoly(s[j + k] - mx);
      part[k] += s[j + k];
    }
  }
  float sum = 0;
  for (; j < len; ++j) {
    s[j] = ExpPoly(s[j] - mx);
    sum += s[j];
  }
  for (int k = 0; k < kLanes; ++k) sum += part[k];
  for (j = len; j < total; ++j) s[j] = 0.0f;
  return {mx, sum};
}

MOEND_VECTOR_CLONES
void SoftmaxRow(float* s, int64_t len, int64_t total) {
  const float inv = 1.0f / ExpRow(s, len, total).sum;
  for (int64_t j = 0; j < len; ++j) s[j] *= inv;
}

MOEND_VECTOR_CLONES
void SiluMul(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + ExpPoly(-g)) * up[i];
  }
}

}  // namespace moend

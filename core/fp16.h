// IEEE binary16 conversion on the host (round to nearest, ties to even), bit
// compatible with CUDA's __float2half_rn / __half2float. fp16 is stored as
// uint16_t so that no header needs cuda_fp16.h.
#ifndef MOEND_CORE_FP16_H_
#define MOEND_CORE_FP16_H_

#include <cstdint>
#include <cstring>

namespace moend {

inline uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return sign | 0x7e00u;     // NaN
  if (x >= 0x477ff000u) return sign | 0x7c00u;    // >= 65520 rounds to infinity
  if (x >= 0x38800000u) {                         // normal half: |f| >= 2^-14
    uint32_t r = x - 0x38000000u;                 // rebias exponent 127 -> 15
    r += 0x0fffu + ((r >> 13) & 1u);              // round to nearest even
    return static_cast<uint16_t>(sign | (r >> 13));
  }
  // Subnormal half (or zero): value = round(|f| * 2^24) units of 2^-24.
  const uint32_t e = x >> 23;
  if (e < 102) return sign;  // |f| < 2^-25 (also float subnormals): rounds to 0
  const uint32_t mant = (x & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - e;  // 14..24
  uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return static_cast<uint16_t>(sign | q);
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t m = h & 0x3ffu;
  uint32_t bits;
  if (e == 0) {
    const float v = static_cast<float>(m) * (1.0f / 16777216.0f);  // m * 2^-24, exact
    return sign ? -v : v;
  } else if (e == 31) {
    bits = sign | 0x7f800000u | (m << 13);
  } else {
    bits = sign | ((e + 112u) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// fp16 round trip: the value an fp16 cache holds for f.
inline float RoundToHalf(float f) { return HalfToFloat(FloatToHalf(f)); }

}  // namespace moend

#endif  // MOEND_CORE_FP16_H_

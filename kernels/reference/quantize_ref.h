// The quantizer of DESIGN.md section 2 on the host: asymmetric min-max,
// round to nearest, fp16 scale and min. The CUDA quantizer (cuda/quantize.cu)
// performs the same float operations in the same order, so both produce the
// same bytes.
#ifndef MOEND_KERNELS_REFERENCE_QUANTIZE_REF_H_
#define MOEND_KERNELS_REFERENCE_QUANTIZE_REF_H_

#include <cmath>
#include <cstdint>

#include "kernels/fp16.h"

namespace moend::kernels::ref {

struct QuantParams {
  uint16_t scale = 0;  // fp16 (max - min) / (2^bits - 1)
  uint16_t min = 0;    // fp16 min
};

inline QuantParams MinMaxParams(float lo, float hi, int bits) {
  const float qmax = static_cast<float>((1 << bits) - 1);
  return {FloatToHalf((hi - lo) / qmax), FloatToHalf(lo)};
}

// Code of x for fp16 params (scale 0: code 0). floor(y + 0.5) then clamp.
inline uint32_t QuantizeValue(float x, float scale, float min, int bits) {
  if (scale == 0.0f) return 0;
  const float qmax = static_cast<float>((1 << bits) - 1);
  float y = std::floor((x - min) / scale + 0.5f);
  y = std::fmin(std::fmax(y, 0.0f), qmax);
  return static_cast<uint32_t>(y);
}

inline float Dequantize(uint32_t code, float scale, float min) {
  return static_cast<float>(code) * scale + min;
}

// Code of channel d in a packed row (bits <= 8).
inline uint32_t GetCode(const uint8_t* row, int64_t d, int bits) {
  const int64_t bit = d * bits;
  return (row[bit >> 3] >> (bit & 7)) & ((1u << bits) - 1u);
}

// ORs a code into a zero-initialised packed row.
inline void SetCode(uint8_t* row, int64_t d, int bits, uint32_t code) {
  const int64_t bit = d * bits;
  row[bit >> 3] = static_cast<uint8_t>(row[bit >> 3] | (code << (bit & 7)));
}

// Quantizes one K group: n rows (rows[i] -> D floats) per channel.
// codes: n rows of PackedRowBytes(D, bits) (zeroed by the caller), scale/min: [D].
// bits == 16 writes fp16 rows into codes.
void QuantizeKeyGroup(const float* const* rows, int64_t n, int64_t head_dim, int bits,
                      uint8_t* codes, uint16_t* scale, uint16_t* min);

// Quantizes one V row per group of 32 channels. codes: PackedRowBytes(D, bits)
// (zeroed by the caller), scale/min: [D/32]. bits == 16 writes the fp16 row.
void QuantizeValueRow(const float* row, int64_t head_dim, int bits, uint8_t* codes,
                      uint16_t* scale, uint16_t* min);

// Dequantizes row i of a K group / a V row into `out` [D] floats.
void DequantizeKeyRow(const uint8_t* row_codes, const uint16_t* scale, const uint16_t* min,
                      int64_t head_dim, int bits, float* out);
void DequantizeValueRow(const uint8_t* row_codes, const uint16_t* scale, const uint16_t* min,
                        int64_t head_dim, int bits, float* out);

}  // namespace moend::kernels::ref

#endif  // MOEND_KERNELS_REFERENCE_QUANTIZE_REF_H_

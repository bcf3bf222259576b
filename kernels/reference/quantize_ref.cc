#include "kernels/reference/quantize_ref.h"

#include <algorithm>
#include <cstring>

#include "core/compression.h"

namespace moend::kernels::ref {

void QuantizeKeyGroup(const float* const* rows, int64_t n, int64_t head_dim, int bits,
                      uint8_t* codes, uint16_t* scale, uint16_t* min) {
  if (bits == kFp16Bits) {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t* out = reinterpret_cast<uint16_t*>(codes + i * head_dim * 2);
      for (int64_t d = 0; d < head_dim; ++d) {
        const uint16_t h = FloatToHalf(rows[i][d]);
        std::memcpy(out + d, &h, 2);
      }
    }
    return;
  }
  const int64_t row_bytes = head_dim * bits / 8;
  for (int64_t d = 0; d < head_dim; ++d) {
    float lo = rows[0][d], hi = rows[0][d];
    for (int64_t i = 1; i < n; ++i) {
      lo = std::fmin(lo, rows[i][d]);
      hi = std::fmax(hi, rows[i][d]);
    }
    const QuantParams p = MinMaxParams(lo, hi, bits);
    scale[d] = p.scale;
    min[d] = p.min;
    const float s = HalfToFloat(p.scale), m = HalfToFloat(p.min);
    for (int64_t i = 0; i < n; ++i) {
      SetCode(codes + i * row_bytes, d, bits, QuantizeValue(rows[i][d], s, m, bits));
    }
  }
}

void QuantizeValueRow(const float* row, int64_t head_dim, int bits, uint8_t* codes,
                      uint16_t* scale, uint16_t* min) {
  if (bits == kFp16Bits) {
    for (int64_t d = 0; d < head_dim; ++d) {
      const uint16_t h = FloatToHalf(row[d]);
      std::memcpy(codes + 2 * d, &h, 2);
    }
    return;
  }
  for (int64_t g = 0; g * kQuantGroup < head_dim; ++g) {
    const int64_t d0 = g * kQuantGroup, d1 = std::min(head_dim, d0 + kQuantGroup);
    float lo = row[d0], hi = row[d0];
    for (int64_t d = d0 + 1; d < d1; ++d) {
      lo = std::fmin(lo, row[d]);
      hi = std::fmax(hi, row[d]);
    }
    const QuantParams p = MinMaxParams(lo, hi, bits);
    scale[g] = p.scale;
    min[g] = p.min;
    const float s = HalfToFloat(p.scale), m = HalfToFloat(p.min);
    for (int64_t d = d0; d < d1; ++d) SetCode(codes, d, bits, QuantizeValue(row[d], s, m, bits));
  }
}

void DequantizeKeyRow(const uint8_t* row_codes, const uint16_t* scale, const uint16_t* min,
                      int64_t head_dim, int bits, float* out) {
  if (bits == kFp16Bits) {
    for (int64_t d = 0; d < head_dim; ++d) {
      uint16_t h;
      std::memcpy(&h, row_codes + 2 * d, 2);
      out[d] = HalfToFloat(h);
    }
    return;
  }
  for (int64_t d = 0; d < head_dim; ++d) {
    out[d] = Dequantize(GetCode(row_codes, d, bits), HalfToFloat(scale[d]), HalfToFloat(min[d]));
  }
}

void DequantizeValueRow(const uint8_t* row_codes, const uint16_t* scale, const uint16_t* min,
                        int64_t head_dim, int bits, float* out) {
  if (bits == kFp16Bits) {
    DequantizeKeyRow(row_codes, nullptr, nullptr, head_dim, bits, out);
    return;
  }
  for (int64_t d = 0; d < head_dim; ++d) {
    const int64_t g = d / kQuantGroup;
    out[d] = Dequantize(GetCode(row_codes, d, bits), HalfToFloat(scale[g]), HalfToFloat(min[g]));
  }
}

}  // namespace moend::kernels::ref

#include "kernels/dequantize.h"

#include <algorithm>

#include "core/compression.h"
#include "kernels/fp16.h"
#include "kernels/reference/quantize_ref.h"

namespace moend::kernels {

void DequantizeQuantizedRows(const CompressedLayer& layer, int64_t h, int64_t first, int64_t count,
                             float* k, float* v) {
  const LayerFormat& f = layer.format();
  const CompressedHead& hd = layer.head(h);
  const int64_t d = f.head_dim;
  const int kbits = f.KBits(h), vbits = f.VBits(h);
  const int64_t krow = PackedRowBytes(d, kbits), vrow = PackedRowBytes(d, vbits);
  const int64_t vgroups = d / kQuantGroup;
  for (int64_t g = 0; g < hd.KeyGroups(); ++g) {
    const int64_t begin = hd.KeyGroupBegin(g), size = hd.KeyGroupSize(g);
    for (int64_t t = std::max(begin, first); t < std::min(begin + size, first + count); ++t) {
      ref::DequantizeKeyRow(hd.k_codes.data() + t * krow,
                            kbits < kFp16Bits ? hd.k_scale.data() + g * d : nullptr,
                            kbits < kFp16Bits ? hd.k_min.data() + g * d : nullptr, d, kbits,
                            k + (t - first) * d);
      ref::DequantizeValueRow(hd.v_codes.data() + t * vrow,
                              vbits < kFp16Bits ? hd.v_scale.data() + t * vgroups : nullptr,
                              vbits < kFp16Bits ? hd.v_min.data() + t * vgroups : nullptr, d,
                              vbits, v + (t - first) * d);
    }
  }
}

void DequantizeHead(const CompressedLayer& layer, int64_t h, std::vector<float>* k,
                    std::vector<float>* v) {
  const int64_t d = layer.format().head_dim;
  const CompressedHead& hd = layer.head(h);
  const int64_t rows = layer.AttendedTokens(h);
  k->resize(static_cast<size_t>(rows * d));
  v->resize(static_cast<size_t>(rows * d));
  DequantizeQuantizedRows(layer, h, 0, hd.quantized, k->data(), v->data());
  int64_t row = hd.quantized;
  for (const auto* part : {&hd.window_k, &hd.residual_k}) {
    const std::vector<uint16_t>& ks = *part;
    const std::vector<uint16_t>& vs = part == &hd.window_k ? hd.window_v : hd.residual_v;
    for (size_t i = 0; i < ks.size(); ++i) {
      (*k)[static_cast<size_t>(row * d) + i] = HalfToFloat(ks[i]);
      (*v)[static_cast<size_t>(row * d) + i] = HalfToFloat(vs[i]);
    }
    row += static_cast<int64_t>(ks.size()) / d;
  }
}

}  // namespace moend::kernels

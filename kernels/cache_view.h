// A read-only view of one KV head of one layer's compressed cache
// (docs/DESIGN.md section 2.7): pointers to the packed parts and their
// lengths. The attention kernels read caches only through views, so the
// storage can live anywhere (CompressedLayer's host vectors, a node's
// reserved buffers, device memory) and need not be copied to be attended.
// Plain types only (fp16 travels as uint16_t).
#ifndef MOEND_KERNELS_CACHE_VIEW_H_
#define MOEND_KERNELS_CACHE_VIEW_H_

#include <cstdint>

namespace moend::kernels {

struct HeadView {
  // Quantized part: the initial_kept tokens kept at compression, then every
  // group of 32 flushed from the residual.
  const uint8_t* k_codes = nullptr;     // [quantized, D*kbits/8] (kbits 16: fp16 rows)
  const uint16_t* k_scale = nullptr;    // fp16 [key_groups, D] (kbits < 16)
  const uint16_t* k_min = nullptr;      // fp16 [key_groups, D]
  const uint8_t* v_codes = nullptr;     // [quantized, D*vbits/8] (vbits 16: fp16 rows)
  const uint16_t* v_scale = nullptr;    // fp16 [quantized, D/32] (vbits < 16)
  const uint16_t* v_min = nullptr;      // fp16 [quantized, D/32]
  const uint16_t* window_k = nullptr;   // fp16 [window, D]
  const uint16_t* window_v = nullptr;
  const uint16_t* residual_k = nullptr; // fp16 [residual, D]
  const uint16_t* residual_v = nullptr;
  int64_t initial_kept = 0;  // K groups of 32 over [0, initial_kept), then one per flush
  int64_t quantized = 0;
  int64_t window = 0;
  int64_t residual = 0;
  int kbits = 16;  // 2, 4, 8 or 16
  int vbits = 16;
};

// K groups of a view: ceil(initial_kept / 32) over the kept tokens, then one
// per flushed group of 32.
inline int64_t ViewKeyGroups(const HeadView& h) {
  return (h.initial_kept + 31) / 32 + (h.quantized - h.initial_kept) / 32;
}
inline int64_t ViewKeyGroupBegin(const HeadView& h, int64_t g) {
  const int64_t initial_groups = (h.initial_kept + 31) / 32;
  return g < initial_groups ? g * 32 : h.initial_kept + (g - initial_groups) * 32;
}
inline int64_t ViewKeyGroupSize(const HeadView& h, int64_t g) {
  const int64_t initial_groups = (h.initial_kept + 31) / 32;
  if (g >= initial_groups) return 32;
  const int64_t left = h.initial_kept - g * 32;
  return left < 32 ? left : 32;
}

}  // namespace moend::kernels

#endif  // MOEND_KERNELS_CACHE_VIEW_H_

// Dense float copies of a compressed layer's heads, decoded with the same
// dequantizers as attention. For host-side consumers that run their own
// matrix products over the cache (CPU calibration and evaluation); the
// attention kernels themselves read the packed codes directly.
#ifndef MOEND_KERNELS_DEQUANTIZE_H_
#define MOEND_KERNELS_DEQUANTIZE_H_

#include <cstdint>
#include <vector>

#include "kernels/compressed_cache.h"

namespace moend::kernels {

// Every token head h attends to, as float rows: the quantized part (in its
// order), then the window, then the residual. k, v: [AttendedTokens(h), D].
void DequantizeHead(const CompressedLayer& layer, int64_t h, std::vector<float>* k,
                    std::vector<float>* v);

// Rows [first, first + count) of head h's quantized part into k, v
// ([count, D] floats each), e.g. the group a residual flush just quantized.
void DequantizeQuantizedRows(const CompressedLayer& layer, int64_t h, int64_t first, int64_t count,
                             float* k, float* v);

}  // namespace moend::kernels

#endif  // MOEND_KERNELS_DEQUANTIZE_H_

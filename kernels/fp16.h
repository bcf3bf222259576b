// The kernels' host fp16 conversion is core's (core/fp16.h), named in this
// namespace for the kernel code.
#ifndef MOEND_KERNELS_FP16_H_
#define MOEND_KERNELS_FP16_H_

#include "core/fp16.h"

namespace moend::kernels {
using ::moend::FloatToHalf;
using ::moend::HalfToFloat;
using ::moend::RoundToHalf;
}  // namespace moend::kernels

#endif  // MOEND_KERNELS_FP16_H_

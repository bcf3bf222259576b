// AttentionKernel instantiations with 8-bit keys (all head dims and V bits).
#include "kernels/cuda/attention_kernel.cuh"

namespace moend::kernels::cuda {
MOEND_DEFINE_ATTENTION_LAUNCH(8)
}  // namespace moend::kernels::cuda

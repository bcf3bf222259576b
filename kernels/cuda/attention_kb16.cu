// AttentionKernel instantiations with 16-bit keys (all head dims and V bits).
#include "kernels/cuda/attention_kernel.cuh"

namespace moend::kernels::cuda {
MOEND_DEFINE_ATTENTION_LAUNCH(16)
}  // namespace moend::kernels::cuda

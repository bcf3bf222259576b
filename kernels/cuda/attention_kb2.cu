// AttentionKernel instantiations with 2-bit keys (all head dims and V bits).
#include "kernels/cuda/attention_kernel.cuh"

namespace moend::kernels::cuda {
MOEND_DEFINE_ATTENTION_LAUNCH(2)
}  // namespace moend::kernels::cuda

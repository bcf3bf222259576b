// Maps run-time (head_dim, kbits, vbits) to template instantiations.
#ifndef MOEND_KERNELS_CUDA_DISPATCH_CUH_
#define MOEND_KERNELS_CUDA_DISPATCH_CUH_

#include <cuda_runtime.h>

#include <type_traits>

namespace moend::kernels::cuda {

template <int V>
using Int = std::integral_constant<int, V>;

// f(Int<D>{}) for D in {64, 128}; cudaErrorInvalidValue otherwise.
template <typename F>
cudaError_t DispatchHeadDim(int head_dim, F&& f) {
  switch (head_dim) {
    case 64: return f(Int<64>{});
    case 128: return f(Int<128>{});
    default: return cudaErrorInvalidValue;
  }
}

// f(Int<B>{}) for B in {2, 4, 8, 16}; cudaErrorInvalidValue otherwise.
template <typename F>
cudaError_t DispatchBits(int bits, F&& f) {
  switch (bits) {
    case 2: return f(Int<2>{});
    case 4: return f(Int<4>{});
    case 8: return f(Int<8>{});
    case 16: return f(Int<16>{});
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace moend::kernels::cuda

#endif  // MOEND_KERNELS_CUDA_DISPATCH_CUH_

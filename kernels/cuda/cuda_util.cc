#include "kernels/cuda/cuda_util.h"

namespace moend::kernels::cuda {

int SmCount() {
  static const int count = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
      cudaGetLastError();  // clear the sticky-free error so later calls do not see it
      return kFallbackSmCount;
    }
    return n;
  }();
  return count;
}

}  // namespace moend::kernels::cuda

// Host-side CUDA helpers of kernels/cuda and worker/ (the one home of them):
// cudaError_t to absl::Status, a grow-only device allocation, and the
// device's multiprocessor count. Includes the CUDA runtime header: only
// sources built with MOEND_HAVE_CUDA include it (public headers that CPU code
// includes, such as kernels/cuda/cuda_backend.h and kernels/cuda/resident.h,
// do not).
#ifndef MOEND_KERNELS_CUDA_CUDA_UTIL_H_
#define MOEND_KERNELS_CUDA_CUDA_UTIL_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace moend::kernels::cuda {

// OK for cudaSuccess, else InternalError naming the call and the CUDA error.
inline absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("CUDA error in ", what, ": ", cudaGetErrorName(e), " (",
                                          cudaGetErrorString(e), ")"));
}

// Return the Status of a CUDA runtime call (or of a launcher returning a
// cudaError_t as int) when it failed.
#define MOEND_CUDA_RETURN(expr) \
  MOEND_RETURN_IF_ERROR(::moend::kernels::cuda::CudaStatus(static_cast<cudaError_t>(expr), #expr))

// Grow-only device allocation: Reserve(n) keeps the buffer when it already
// holds n bytes, else frees it and allocates n (at least 256) bytes; the
// contents are not kept.
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), capacity_(std::exchange(o.capacity_, 0)) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      Free();
      ptr_ = std::exchange(o.ptr_, nullptr);
      capacity_ = std::exchange(o.capacity_, 0);
    }
    return *this;
  }
  ~DeviceArray() { Free(); }

  absl::Status Reserve(size_t bytes) {
    bytes = std::max<size_t>(bytes, 256);
    if (bytes <= capacity_) return absl::OkStatus();
    Free();
    MOEND_CUDA_RETURN(cudaMalloc(&ptr_, bytes));
    capacity_ = bytes;
    return absl::OkStatus();
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t capacity() const { return capacity_; }

 private:
  void Free() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    capacity_ = 0;
  }

  void* ptr_ = nullptr;
  size_t capacity_ = 0;
};

// Multiprocessors of the current device, queried once per process. When the
// query fails (no usable device; a launch would fail anyway) it returns
// kFallbackSmCount, the H100 SXM's 132 (the card the kernels are tuned on).
inline constexpr int kFallbackSmCount = 132;
int SmCount();

}  // namespace moend::kernels::cuda

#endif  // MOEND_KERNELS_CUDA_CUDA_UTIL_H_

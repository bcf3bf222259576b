// Host-side CUDA helpers of the worker's GPU code (worker/gpu_calibrator.cc,
// worker/gpu_model.cc): cudaError_t / cublasStatus_t to absl::Status, and a
// grow-only device allocation. Includes the CUDA runtime and cuBLAS headers:
// only sources built with MOEND_HAVE_CUDA include it.
#ifndef MOEND_WORKER_CUDA_UTIL_H_
#define MOEND_WORKER_CUDA_UTIL_H_

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace moend::worker {

inline absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("CUDA error in ", what, ": ", cudaGetErrorName(e), " (",
                                          cudaGetErrorString(e), ")"));
}
inline absl::Status CublasStatus(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("cuBLAS error in ", what, ": status ", static_cast<int>(s)));
}

// Return the Status of a CUDA runtime call (or of a launcher returning a
// cudaError_t as int) / a cuBLAS call when it failed.
#define MOEND_CUDA_RETURN(expr) \
  MOEND_RETURN_IF_ERROR(::moend::worker::CudaStatus(static_cast<cudaError_t>(expr), #expr))
#define MOEND_CUBLAS_RETURN(expr) \
  MOEND_RETURN_IF_ERROR(::moend::worker::CublasStatus((expr), #expr))

// Grow-only device allocation.
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  absl::Status Reserve(size_t bytes) {
    bytes = std::max<size_t>(bytes, 256);
    if (bytes <= capacity_) return absl::OkStatus();
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    capacity_ = 0;
    MOEND_CUDA_RETURN(cudaMalloc(&ptr_, bytes));
    capacity_ = bytes;
    return absl::OkStatus();
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace moend::worker

#endif  // MOEND_WORKER_CUDA_UTIL_H_

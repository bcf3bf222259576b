// Host-side CUDA helpers of the worker's GPU code (worker/gpu_calibrator.cc,
// worker/gpu_model.cc). CudaStatus, MOEND_CUDA_RETURN, DeviceArray and
// SmCount live in kernels/cuda/cuda_util.h (one home for kernels/ and
// worker/); this adds the cuBLAS status conversion. Includes the CUDA runtime
// and cuBLAS headers: only sources built with MOEND_HAVE_CUDA include it.
#ifndef MOEND_WORKER_CUDA_UTIL_H_
#define MOEND_WORKER_CUDA_UTIL_H_

#include <cublas_v2.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "kernels/cuda/cuda_util.h"

namespace moend::worker {

using kernels::cuda::CudaStatus;
using kernels::cuda::DeviceArray;

inline absl::Status CublasStatus(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("cuBLAS error in ", what, ": status ", static_cast<int>(s)));
}

// Return the Status of a cuBLAS call when it failed.
#define MOEND_CUBLAS_RETURN(expr) \
  MOEND_RETURN_IF_ERROR(::moend::worker::CublasStatus((expr), #expr))

}  // namespace moend::worker

#endif  // MOEND_WORKER_CUDA_UTIL_H_

// Run-time choice between the plain C++ reference and the CUDA kernels. Both
// implement the one semantics of DESIGN.md section 2 behind the same API.
#ifndef MOEND_KERNELS_BACKEND_H_
#define MOEND_KERNELS_BACKEND_H_

#include <string>

#include "absl/status/statusor.h"

namespace moend::kernels {

enum class Backend {
  kAuto,       // CUDA when compiled in and a device is present, else kReference
  kReference,  // plain C++ on the host
  kCuda,       // CUDA kernels; FailedPrecondition when unavailable
};

std::string BackendName(Backend b);

// True when this build contains the CUDA kernels (MOEND_CUDA found nvcc).
bool CudaCompiledIn();
// True when the CUDA kernels are compiled in and a CUDA device can be used.
// The probe runs once; the result is cached.
bool CudaDeviceAvailable();
// Why CUDA is not usable ("built without CUDA", "no CUDA device: ..."); empty when it is.
std::string CudaUnavailableReason();

// kAuto -> the concrete backend; kCuda when unavailable -> FailedPrecondition.
absl::StatusOr<Backend> ResolveBackend(Backend requested);

}  // namespace moend::kernels

#endif  // MOEND_KERNELS_BACKEND_H_

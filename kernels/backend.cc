#include "kernels/backend.h"

#include <mutex>

#ifdef MOEND_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace moend::kernels {
namespace {

struct Probe {
  bool available = false;
  std::string reason;
};

const Probe& GetProbe() {
  static const Probe probe = [] {
    Probe p;
#ifdef MOEND_WITH_CUDA
    p.available = cuda::DeviceAvailable(&p.reason);
#else
    p.reason = "no CUDA device: this build has no CUDA kernels (MOEND_CUDA=OFF or no nvcc)";
#endif
    return p;
  }();
  return probe;
}

}  // namespace

std::string BackendName(Backend b) {
  switch (b) {
    case Backend::kAuto: return "auto";
    case Backend::kReference: return "reference";
    case Backend::kCuda: return "cuda";
  }
  return "unknown";
}

bool CudaCompiledIn() {
#ifdef MOEND_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool CudaDeviceAvailable() { return GetProbe().available; }

std::string CudaUnavailableReason() { return GetProbe().available ? "" : GetProbe().reason; }

absl::StatusOr<Backend> ResolveBackend(Backend requested) {
  switch (requested) {
    case Backend::kReference: return Backend::kReference;
    case Backend::kAuto: return CudaDeviceAvailable() ? Backend::kCuda : Backend::kReference;
    case Backend::kCuda:
      if (!CudaDeviceAvailable()) {
        return absl::FailedPreconditionError("CUDA backend requested but " + CudaUnavailableReason());
      }
      return Backend::kCuda;
  }
  return absl::InvalidArgumentError("unknown backend");
}

}  // namespace moend::kernels

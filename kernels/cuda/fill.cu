// Deterministic pseudo-random device fills for tests and benchmarks.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace moend::kernels::cuda {
namespace {

__device__ __forceinline__ uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}
__device__ __forceinline__ float Uniform(uint64_t seed, int64_t i) {
  return static_cast<float>(Mix(seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(i)) >> 40) *
         (1.0f / 16777216.0f);
}

__global__ void FillBytesKernel(uint8_t* p, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    p[i] = static_cast<uint8_t>(Mix(seed + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull));
  }
}
__global__ void FillHalfKernel(uint16_t* p, int64_t n, float lo, float hi, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    p[i] = FloatToHalfBits(lo + (hi - lo) * Uniform(seed, i));
  }
}
__global__ void FillFloatKernel(float* p, int64_t n, float lo, float hi, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    p[i] = lo + (hi - lo) * Uniform(seed, i);
  }
}

}  // namespace

int LaunchFillBytes(uint8_t* p, int64_t n, uint64_t seed, void* stream) {
  if (n <= 0) return cudaSuccess;
  FillBytesKernel<<<1024, 256, 0, static_cast<cudaStream_t>(stream)>>>(p, n, seed);
  return cudaGetLastError();
}
int LaunchFillHalf(uint16_t* p, int64_t n, float lo, float hi, uint64_t seed, void* stream) {
  if (n <= 0) return cudaSuccess;
  FillHalfKernel<<<1024, 256, 0, static_cast<cudaStream_t>(stream)>>>(p, n, lo, hi, seed);
  return cudaGetLastError();
}
int LaunchFillFloat(float* p, int64_t n, float lo, float hi, uint64_t seed, void* stream) {
  if (n <= 0) return cudaSuccess;
  FillFloatKernel<<<1024, 256, 0, static_cast<cudaStream_t>(stream)>>>(p, n, lo, hi, seed);
  return cudaGetLastError();
}

}  // namespace moend::kernels::cuda

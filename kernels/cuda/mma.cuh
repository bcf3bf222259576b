// Inline-PTX helpers of the tensor-core kernels (kernels/cuda/attention_kernel.cuh,
// worker/gpu_calibrator_kernels.cu): mma.sync m16n8k16 and cp.async (sm_80+).
#ifndef MOEND_KERNELS_CUDA_MMA_CUH_
#define MOEND_KERNELS_CUDA_MMA_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace moend::kernels::cuda {

// c += A B, A: 16x16 fp16 (row, fragments a0..a3), B: 16x8 fp16 (col,
// fragments b0, b1), c: 16x8 fp32 accumulator fragment.
__device__ __forceinline__ void Mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void Mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Mma16816(c, a[0], a[1], a[2], a[3], b0, b1);
}

// cp.async of 16 bytes from global to shared memory, of which the first
// src_bytes (0..16) are read and the rest zero-filled; L2 only (.cg).
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, int src_bytes) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes) : "memory");
}
// cp.async of 16 whole bytes.
__device__ __forceinline__ void CpAsync16(void* dst, const void* src) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

}  // namespace moend::kernels::cuda

#endif  // MOEND_KERNELS_CUDA_MMA_CUH_

// Row-major single-precision matrix product used by the CPU forward pass:
// C[m, n] = alpha * A[m, k] * op(B) + beta * C, op(B) = B[k, n] or B[n, k]^T.
// OpenBLAS when the build found it, else a portable blocked loop.
#ifndef MOEND_RUNTIME_GEMM_H_
#define MOEND_RUNTIME_GEMM_H_

#include <cstdint>

namespace moend {

enum class Transpose { kNo, kYes };

void Gemm(Transpose trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Threads the matrix product may use (OpenBLAS's pool); <= 0 leaves the default.
void SetGemmThreads(int threads);

}  // namespace moend

#endif  // MOEND_RUNTIME_GEMM_H_

#include "runtime/gemm.h"

#include <algorithm>
#include <vector>

#ifdef MOEND_HAVE_CBLAS
#include <cblas.h>
#endif

namespace moend {

#ifdef MOEND_HAVE_CBLAS

namespace {

// Our parallel loops call Gemm from OpenMP threads. The OpenMP build of
// OpenBLAS then runs single-threaded inside them; the pthreads build would add
// its own threads to ours and oversubscribe the cores (7x slower seen on two
// cores). If the loader gave us the pthreads build anyway (Debian's
// libopenblas.so.0 alternative), keep OpenBLAS single-threaded.
bool ConfigureOpenBlasOnce() {
  if (openblas_get_parallel() == 1) openblas_set_num_threads(1);
  return true;
}

}  // namespace

void Gemm(Transpose trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  static const bool configured = ConfigureOpenBlasOnce();
  (void)configured;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b == Transpose::kYes ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

void SetGemmThreads(int threads) {
  if (threads > 0 && openblas_get_parallel() != 1) openblas_set_num_threads(threads);
}

#else

void Gemm(Transpose trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  // Blocked over n so each row of A meets a cache-sized panel of B.
  constexpr int64_t kBlockN = 64;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    std::vector<float> acc(kBlockN);
    for (int64_t j0 = 0; j0 < n; j0 += kBlockN) {
      const int64_t j1 = std::min(n, j0 + kBlockN);
      std::fill(acc.begin(), acc.end(), 0.0f);
      if (trans_b == Transpose::kYes) {
        for (int64_t j = j0; j < j1; ++j) {
          const float* bj = b + j * ldb;
          const float* ai = a + i * lda;
          float s = 0;
          for (int64_t p = 0; p < k; ++p) s += ai[p] * bj[p];
          acc[j - j0] = s;
        }
      } else {
        for (int64_t p = 0; p < k; ++p) {
          const float aip = a[i * lda + p];
          const float* bp = b + p * ldb;
          for (int64_t j = j0; j < j1; ++j) acc[j - j0] += aip * bp[j];
        }
      }
      for (int64_t j = j0; j < j1; ++j) {
        float& cij = c[i * ldc + j];
        cij = alpha * acc[j - j0] + (beta == 0.0f ? 0.0f : beta * cij);
      }
    }
  }
}

void SetGemmThreads(int) {}

#endif

}  // namespace moend

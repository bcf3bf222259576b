// The AVX2 + FMA + F16C CPU attention path (this file is compiled with
// -mavx2 -mfma -mf16c; attention_cpu.cc calls it only when the CPU has them).
// Codes are unpacked 8 channels at a time with variable shifts, fp16 rows
// converted with vcvtph2ps, logits computed 4 tokens at a time, and the V
// accumulation keeps 32 output channels in registers across a unit's tokens.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/attention_cpu_internal.h"
// clang-format off
#include "kernels/cpu/attention_core.h"
// clang-format on

namespace moend::kernels::cpu {
namespace {

inline float HorizontalSum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// The horizontal sums of four vectors.
inline __m128 Sum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// exp(x) for x <= 0 (Cephes' expf polynomial, relative error ~2e-7); inputs
// below -87 give ~1e-38 rather than 0.
inline __m256 Exp(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

struct Avx2 {
  // n fp16 values (n a multiple of 8, possibly unaligned) -> float.
  static void Half(const void* src, int64_t n, float* dst) {
    const auto* bytes = static_cast<const uint8_t*>(src);
    for (int64_t i = 0; i < n; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + 2 * i));
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
  }
  static void HalfScalar(const uint16_t* src, int64_t n, float* dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) Half(src + i, 8, dst + i);
    for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
  }
  // Codes of a packed row (bits 2, 4 or 8; D a multiple of 32) -> float.
  static void Unpack(const uint8_t* row, int bits, int64_t d, float* dst) {
    if (bits == 8) {
      for (int64_t e = 0; e < d; e += 8) {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + e));
        _mm256_storeu_ps(dst + e, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)));
      }
    } else if (bits == 4) {
      const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
      const __m256i mask = _mm256_set1_epi32(15);
      for (int64_t e = 0; e < d; e += 8) {
        uint32_t w;
        std::memcpy(&w, row + e / 2, 4);
        const __m256i c = _mm256_and_si256(
            _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(w)), shifts), mask);
        _mm256_storeu_ps(dst + e, _mm256_cvtepi32_ps(c));
      }
    } else {  // 2
      const __m256i lo = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
      const __m256i hi = _mm256_setr_epi32(16, 18, 20, 22, 24, 26, 28, 30);
      const __m256i mask = _mm256_set1_epi32(3);
      for (int64_t e = 0; e < d; e += 16) {
        uint32_t w;
        std::memcpy(&w, row + e / 4, 4);
        const __m256i b = _mm256_set1_epi32(static_cast<int>(w));
        _mm256_storeu_ps(dst + e,
                         _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(b, lo), mask)));
        _mm256_storeu_ps(dst + e + 8,
                         _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(b, hi), mask)));
      }
    }
  }
  static float Dot(const float* a, const float* b, int64_t d) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (int64_t e = 0; e < d; e += 16) {
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + e), _mm256_loadu_ps(b + e), s0);
      s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + e + 8), _mm256_loadu_ps(b + e + 8), s1);
    }
    return HorizontalSum(_mm256_add_ps(s0, s1));
  }
  static void Mul(const float* a, const float* b, float* dst, int64_t d) {
    for (int64_t e = 0; e < d; e += 8) {
      _mm256_storeu_ps(dst + e, _mm256_mul_ps(_mm256_loadu_ps(a + e), _mm256_loadu_ps(b + e)));
    }
  }
  // logit[t] = q . k[t] + c for t < n; k: [n, D]. Four tokens share each q load.
  static void Logits(const float* q, const float* k, int64_t n, int64_t d, float c, float* logit) {
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
      const float* k0 = k + t * d;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t e = 0; e < d; e += 8) {
        const __m256 qv = _mm256_loadu_ps(q + e);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + e), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d + e), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 2 * d + e), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 3 * d + e), a3);
      }
      _mm_storeu_ps(logit + t, _mm_add_ps(Sum4(a0, a1, a2, a3), _mm_set1_ps(c)));
    }
    for (; t < n; ++t) logit[t] = Dot(q, k + t * d, d) + c;
  }
  // Logits of two queries; each K load serves both (8 accumulators).
  static void Logits2(const float* qa, const float* qb, const float* k, int64_t n, int64_t d,
                      float ca, float cb, float* la, float* lb) {
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
      const float* k0 = k + t * d;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (int64_t e = 0; e < d; e += 8) {
        const __m256 qav = _mm256_loadu_ps(qa + e), qbv = _mm256_loadu_ps(qb + e);
        const __m256 x0 = _mm256_loadu_ps(k0 + e), x1 = _mm256_loadu_ps(k0 + d + e);
        const __m256 x2 = _mm256_loadu_ps(k0 + 2 * d + e), x3 = _mm256_loadu_ps(k0 + 3 * d + e);
        a0 = _mm256_fmadd_ps(qav, x0, a0);
        a1 = _mm256_fmadd_ps(qav, x1, a1);
        a2 = _mm256_fmadd_ps(qav, x2, a2);
        a3 = _mm256_fmadd_ps(qav, x3, a3);
        b0 = _mm256_fmadd_ps(qbv, x0, b0);
        b1 = _mm256_fmadd_ps(qbv, x1, b1);
        b2 = _mm256_fmadd_ps(qbv, x2, b2);
        b3 = _mm256_fmadd_ps(qbv, x3, b3);
      }
      _mm_storeu_ps(la + t, _mm_add_ps(Sum4(a0, a1, a2, a3), _mm_set1_ps(ca)));
      _mm_storeu_ps(lb + t, _mm_add_ps(Sum4(b0, b1, b2, b3), _mm_set1_ps(cb)));
    }
    for (; t < n; ++t) {
      la[t] = Dot(qa, k + t * d, d) + ca;
      lb[t] = Dot(qb, k + t * d, d) + cb;
    }
  }
  // p[t] = exp(x[t] - mx); returns the sum.
  static float ExpSum(const float* x, int64_t n, float mx, float* p) {
    const __m256 m = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) {
      const __m256 e = Exp(_mm256_sub_ps(_mm256_loadu_ps(x + t), m));
      _mm256_storeu_ps(p + t, e);
      acc = _mm256_add_ps(acc, e);
    }
    float sum = HorizontalSum(acc);
    for (; t < n; ++t) {
      p[t] = __builtin_expf(x[t] - mx);
      sum += p[t];
    }
    return sum;
  }
  static void Scale(float a, float* y, int64_t d) {
    const __m256 av = _mm256_set1_ps(a);
    for (int64_t e = 0; e < d; e += 8) {
      _mm256_storeu_ps(y + e, _mm256_mul_ps(av, _mm256_loadu_ps(y + e)));
    }
  }
  static void AddConst(float c, float* y, int64_t n) {
    const __m256 cv = _mm256_set1_ps(c);
    for (int64_t e = 0; e < n; e += 8) {
      _mm256_storeu_ps(y + e, _mm256_add_ps(cv, _mm256_loadu_ps(y + e)));
    }
  }
  // o[j*32 + c] += sum_t w[j * ws + t] * v[t, j*32 + c] for t < n; v: [n, D]
  // (ws = 0: one weight per token for every chunk).
  // 32 outputs stay in registers over the tokens (two sets, even and odd t).
  static void AccumV(const float* w, int64_t ws, const float* v, int64_t n, int64_t d,
                     float* o) {
    const int64_t chunks = d / kChunk;
    for (int64_t j = 0; j < chunks; ++j) {
      float* oj = o + j * kChunk;
      __m256 a0 = _mm256_loadu_ps(oj), a1 = _mm256_loadu_ps(oj + 8);
      __m256 a2 = _mm256_loadu_ps(oj + 16), a3 = _mm256_loadu_ps(oj + 24);
      __m256 b0 = _mm256_setzero_ps(), b1 = b0, b2 = b0, b3 = b0;
      int64_t t = 0;
      for (; t + 2 <= n; t += 2) {
        const float* v0 = v + t * d + j * kChunk;
        const float* v1 = v0 + d;
        const __m256 w0 = _mm256_set1_ps(w[j * ws + t]);
        const __m256 w1 = _mm256_set1_ps(w[j * ws + t + 1]);
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(v0), a0);
        a1 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(v0 + 8), a1);
        a2 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(v0 + 16), a2);
        a3 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(v0 + 24), a3);
        b0 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(v1), b0);
        b1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(v1 + 8), b1);
        b2 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(v1 + 16), b2);
        b3 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(v1 + 24), b3);
      }
      if (t < n) {
        const float* v0 = v + t * d + j * kChunk;
        const __m256 w0 = _mm256_set1_ps(w[j * ws + t]);
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(v0), a0);
        a1 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(v0 + 8), a1);
        a2 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(v0 + 16), a2);
        a3 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(v0 + 24), a3);
      }
      _mm256_storeu_ps(oj, _mm256_add_ps(a0, b0));
      _mm256_storeu_ps(oj + 8, _mm256_add_ps(a1, b1));
      _mm256_storeu_ps(oj + 16, _mm256_add_ps(a2, b2));
      _mm256_storeu_ps(oj + 24, _mm256_add_ps(a3, b3));
    }
  }
  // AccumV for two queries over the same tokens; each V load serves both.
  static void AccumV2(const float* wa, const float* wb, int64_t ws, const float* v, int64_t n,
                      int64_t d, float* oa, float* ob) {
    const int64_t chunks = d / kChunk;
    for (int64_t j = 0; j < chunks; ++j) {
      float* oaj = oa + j * kChunk;
      float* obj = ob + j * kChunk;
      __m256 a0 = _mm256_loadu_ps(oaj), a1 = _mm256_loadu_ps(oaj + 8);
      __m256 a2 = _mm256_loadu_ps(oaj + 16), a3 = _mm256_loadu_ps(oaj + 24);
      __m256 b0 = _mm256_loadu_ps(obj), b1 = _mm256_loadu_ps(obj + 8);
      __m256 b2 = _mm256_loadu_ps(obj + 16), b3 = _mm256_loadu_ps(obj + 24);
      for (int64_t t = 0; t < n; ++t) {
        const float* vt = v + t * d + j * kChunk;
        const __m256 x0 = _mm256_loadu_ps(vt), x1 = _mm256_loadu_ps(vt + 8);
        const __m256 x2 = _mm256_loadu_ps(vt + 16), x3 = _mm256_loadu_ps(vt + 24);
        const __m256 wav = _mm256_set1_ps(wa[j * ws + t]);
        const __m256 wbv = _mm256_set1_ps(wb[j * ws + t]);
        a0 = _mm256_fmadd_ps(wav, x0, a0);
        a1 = _mm256_fmadd_ps(wav, x1, a1);
        a2 = _mm256_fmadd_ps(wav, x2, a2);
        a3 = _mm256_fmadd_ps(wav, x3, a3);
        b0 = _mm256_fmadd_ps(wbv, x0, b0);
        b1 = _mm256_fmadd_ps(wbv, x1, b1);
        b2 = _mm256_fmadd_ps(wbv, x2, b2);
        b3 = _mm256_fmadd_ps(wbv, x3, b3);
      }
      _mm256_storeu_ps(oaj, a0);
      _mm256_storeu_ps(oaj + 8, a1);
      _mm256_storeu_ps(oaj + 16, a2);
      _mm256_storeu_ps(oaj + 24, a3);
      _mm256_storeu_ps(obj, b0);
      _mm256_storeu_ps(obj + 8, b1);
      _mm256_storeu_ps(obj + 16, b2);
      _mm256_storeu_ps(obj + 24, b3);
    }
  }
};

}  // namespace

void AttendHeadAvx2(const AttentionItem& item, const AttentionShape& shape, int64_t kv_head) {
  AttendHead<Avx2>(item, shape, kv_head);
}

}  // namespace moend::kernels::cpu

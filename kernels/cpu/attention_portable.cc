// The portable CPU attention path: plain loops (the compiler may vectorise
// them with the baseline instruction set).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/attention_cpu_internal.h"
#include "kernels/fp16.h"
// clang-format off
#include "kernels/cpu/attention_core.h"
// clang-format on

namespace moend::kernels::cpu {
namespace {

struct Portable {
  // n fp16 values (possibly unaligned, in a byte buffer) -> float.
  static void Half(const void* src, int64_t n, float* dst) {
    const auto* bytes = static_cast<const uint8_t*>(src);
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, bytes + 2 * i, 2);
      dst[i] = HalfToFloat(h);
    }
  }
  static void HalfScalar(const uint16_t* src, int64_t n, float* dst) { Half(src, n, dst); }
  // Codes of a packed row (bits 2, 4 or 8) -> float, code of channel e at bits [b*e, b*e+b).
  static void Unpack(const uint8_t* row, int bits, int64_t d, float* dst) {
    const uint32_t mask = (1u << bits) - 1u;
    for (int64_t e = 0; e < d; ++e) {
      const int64_t bit = e * bits;
      dst[e] = static_cast<float>((row[bit >> 3] >> (bit & 7)) & mask);
    }
  }
  static float Dot(const float* a, const float* b, int64_t d) {
    float s = 0.0f;
    for (int64_t e = 0; e < d; ++e) s += a[e] * b[e];
    return s;
  }
  static void Mul(const float* a, const float* b, float* dst, int64_t d) {
    for (int64_t e = 0; e < d; ++e) dst[e] = a[e] * b[e];
  }
  // logit[t] = q . k[t] + c for t < n; k: [n, D].
  static void Logits(const float* q, const float* k, int64_t n, int64_t d, float c, float* logit) {
    for (int64_t t = 0; t < n; ++t) logit[t] = Dot(q, k + t * d, d) + c;
  }
  static void Logits2(const float* qa, const float* qb, const float* k, int64_t n, int64_t d,
                      float ca, float cb, float* la, float* lb) {
    Logits(qa, k, n, d, ca, la);
    Logits(qb, k, n, d, cb, lb);
  }
  // p[t] = exp(x[t] - mx); returns the sum.
  static float ExpSum(const float* x, int64_t n, float mx, float* p) {
    float sum = 0.0f;
    for (int64_t t = 0; t < n; ++t) {
      p[t] = std::exp(x[t] - mx);
      sum += p[t];
    }
    return sum;
  }
  static void Scale(float a, float* y, int64_t d) {
    for (int64_t e = 0; e < d; ++e) y[e] *= a;
  }
  static void AddConst(float c, float* y, int64_t n) {
    for (int64_t e = 0; e < n; ++e) y[e] += c;
  }
  // o[j*32 + c] += sum_t w[j * ws + t] * v[t, j*32 + c] for t < n; v: [n, D]
  // (ws = 0: one weight per token for every chunk).
  static void AccumV(const float* w, int64_t ws, const float* v, int64_t n, int64_t d,
                     float* o) {
    const int64_t chunks = d / kChunk;
    for (int64_t j = 0; j < chunks; ++j) {
      for (int64_t t = 0; t < n; ++t) {
        const float wt = w[j * ws + t];
        const float* vr = v + t * d + j * kChunk;
        for (int64_t c = 0; c < kChunk; ++c) o[j * kChunk + c] += wt * vr[c];
      }
    }
  }
  static void AccumV2(const float* wa, const float* wb, int64_t ws, const float* v, int64_t n,
                      int64_t d, float* oa, float* ob) {
    AccumV(wa, ws, v, n, d, oa);
    AccumV(wb, ws, v, n, d, ob);
  }
};

}  // namespace

void AttendHeadPortable(const AttentionItem& item, const AttentionShape& shape, int64_t kv_head) {
  AttendHead<Portable>(item, shape, kv_head);
}

}  // namespace moend::kernels::cpu

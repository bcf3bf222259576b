#include "runtime/partial_attention.h"

#include <algorithm>
#include <cmath>

#include "runtime/gemm.h"
#include "runtime/vec_math.h"

namespace moend {

void ExpScores(const float* q, int64_t p, const float* k, int64_t rows, int64_t d,
               int64_t causal_offset, std::vector<float>& scores, SoftmaxPartial& part) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  scores.resize(static_cast<size_t>(p * rows));
  part.max.assign(static_cast<size_t>(p), -INFINITY);
  part.sum.assign(static_cast<size_t>(p), 0.0f);
  if (rows == 0) return;
  Gemm(Transpose::kYes, p, rows, d, scale, q, d, k, d, 0.0f, scores.data(), rows);
  for (int64_t i = 0; i < p; ++i) {
    const int64_t len = causal_offset < 0 ? rows : std::min(rows, causal_offset + i + 1);
    if (len <= 0) {
      std::fill(scores.begin() + i * rows, scores.begin() + (i + 1) * rows, 0.0f);
      continue;
    }
    const ExpRowResult r = ExpRow(scores.data() + i * rows, len, rows);
    part.max[static_cast<size_t>(i)] = r.max;
    part.sum[static_cast<size_t>(i)] = r.sum;
  }
}

void AttendPartial(const float* q, int64_t p, const float* k, const float* v, int64_t rows,
                   int64_t d, int64_t causal_offset, std::vector<float>& scores,
                   SoftmaxPartial& part) {
  ExpScores(q, p, k, rows, d, causal_offset, scores, part);
  part.o.assign(static_cast<size_t>(p * d), 0.0f);
  if (rows > 0) {
    Gemm(Transpose::kNo, p, d, rows, 1.0f, scores.data(), rows, v, d, 0.0f, part.o.data(), d);
  }
}

void MergePartials(const SoftmaxPartial& a, const SoftmaxPartial& b, int64_t p, int64_t d,
                   float* out, int64_t out_stride) {
  for (int64_t i = 0; i < p; ++i) {
    const float m = std::max(a.max[i], b.max[i]);
    const float wa = a.max[i] == -INFINITY ? 0.0f : std::exp(a.max[i] - m);
    const float wb = b.max[i] == -INFINITY ? 0.0f : std::exp(b.max[i] - m);
    const float denom = a.sum[i] * wa + b.sum[i] * wb;
    const float inv = denom > 0 ? 1.0f / denom : 0.0f;
    for (int64_t j = 0; j < d; ++j) {
      out[i * out_stride + j] = (a.o[i * d + j] * wa + b.o[i * d + j] * wb) * inv;
    }
  }
}

}  // namespace moend

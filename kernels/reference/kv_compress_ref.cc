// Reference eviction scoring, selection and quantization.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/compression.h"
#include "kernels/fp16.h"
#include "kernels/reference/quantize_ref.h"
#include "kernels/reference/reference.h"

namespace moend::kernels::ref {
namespace {

float Dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < 8; ++j) s += acc[j];
  return s;
}

}  // namespace

EvictionScores ComputeEvictionScores(const LayerTensors& x, int64_t c) {
  const int64_t d = x.head_dim, n = x.tokens;
  const int64_t w = WindowTokens(c), cand = CandidateTokens(c);
  const int64_t group = x.num_heads / x.num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  EvictionScores out;
  out.num_kv_heads = x.num_kv_heads;
  out.prefix_tokens = c;
  out.candidates = cand;
  out.score.assign(x.num_kv_heads * cand, 0.0f);
  if (cand == 0) return out;
#pragma omp parallel for schedule(static)
  for (int64_t h = 0; h < x.num_kv_heads; ++h) {
    std::vector<double> raw(cand, 0.0);
    std::vector<float> logit(c);
    const float* kh = x.k + h * n * d;
    for (int64_t g = 0; g < group; ++g) {
      const int64_t hq = h * group + g;
      for (int64_t i = c - w; i < c; ++i) {
        const float* qi = x.q + (hq * n + i) * d;
        float mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          logit[j] = Dot(qi, kh + j * d, d) * scale;
          mx = std::max(mx, logit[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += std::exp(static_cast<double>(logit[j] - mx));
        for (int64_t j = 0; j < cand; ++j) raw[j] += std::exp(static_cast<double>(logit[j] - mx)) / sum;
      }
    }
    // Average pool, kernel 7, padding 3, padding not counted.
    for (int64_t j = 0; j < cand; ++j) {
      const int64_t lo = std::max<int64_t>(0, j - 3), hi = std::min<int64_t>(cand - 1, j + 3);
      double s = 0;
      for (int64_t t = lo; t <= hi; ++t) s += raw[t];
      out.score[h * cand + j] = static_cast<float>(s / static_cast<double>(hi - lo + 1));
    }
  }
  return out;
}

KeptSet SelectKept(const EvictionScores& scores, int64_t kept) {
  KeptSet out;
  out.num_kv_heads = scores.num_kv_heads;
  out.prefix_tokens = scores.prefix_tokens;
  out.kept = kept;
  out.index.resize(scores.num_kv_heads * kept);
  const int64_t cand = scores.candidates;
  std::vector<int32_t> order(cand);
  for (int64_t h = 0; h < scores.num_kv_heads; ++h) {
    const float* s = scores.score.data() + h * cand;
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + kept, order.end(), [s](int32_t a, int32_t b) {
      return s[a] > s[b] || (s[a] == s[b] && a < b);
    });
    std::sort(order.begin(), order.begin() + kept);
    std::copy(order.begin(), order.begin() + kept, out.index.begin() + h * kept);
  }
  return out;
}

CompressedLayer QuantizeKept(const LayerTensors& x, const KeptSet& kept, int kbits, int vbits) {
  const int64_t d = x.head_dim, n = x.tokens, c = kept.prefix_tokens, m = kept.kept;
  const int64_t w = WindowTokens(c);
  const LayerFormat format{x.num_kv_heads, d, kbits, vbits};
  CompressedLayer layer(format, c);
  const int64_t krow = PackedRowBytes(d, kbits), vrow = PackedRowBytes(d, vbits);
  const int64_t groups = (m + kQuantGroup - 1) / kQuantGroup, vgroups = d / kQuantGroup;
  for (int64_t h = 0; h < x.num_kv_heads; ++h) {
    CompressedHead& hd = layer.head(h);
    const float* kh = x.k + h * n * d;
    const float* vh = x.v + h * n * d;
    const int32_t* idx = kept.index.data() + h * m;
    hd.initial_kept = hd.quantized = m;
    hd.position.assign(idx, idx + m);
    hd.k_codes.assign(m * krow, 0);
    hd.v_codes.assign(m * vrow, 0);
    if (kbits < kFp16Bits) {
      hd.k_scale.resize(groups * d);
      hd.k_min.resize(groups * d);
    }
    if (vbits < kFp16Bits) {
      hd.v_scale.resize(m * vgroups);
      hd.v_min.resize(m * vgroups);
    }
    std::vector<const float*> rows(kQuantGroup);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t t0 = g * kQuantGroup, cnt = std::min(kQuantGroup, m - t0);
      for (int64_t i = 0; i < cnt; ++i) rows[i] = kh + static_cast<int64_t>(idx[t0 + i]) * d;
      ref::QuantizeKeyGroup(rows.data(), cnt, d, kbits, hd.k_codes.data() + t0 * krow,
                            kbits < kFp16Bits ? hd.k_scale.data() + g * d : nullptr,
                            kbits < kFp16Bits ? hd.k_min.data() + g * d : nullptr);
    }
    for (int64_t t = 0; t < m; ++t) {
      ref::QuantizeValueRow(vh + static_cast<int64_t>(idx[t]) * d, d, vbits,
                            hd.v_codes.data() + t * vrow,
                            vbits < kFp16Bits ? hd.v_scale.data() + t * vgroups : nullptr,
                            vbits < kFp16Bits ? hd.v_min.data() + t * vgroups : nullptr);
    }
    hd.window_k.resize(w * d);
    hd.window_v.resize(w * d);
    for (int64_t i = 0; i < w * d; ++i) {
      hd.window_k[i] = FloatToHalf(kh[(c - w) * d + i]);
      hd.window_v[i] = FloatToHalf(vh[(c - w) * d + i]);
    }
  }
  return layer;
}

}  // namespace moend::kernels::ref

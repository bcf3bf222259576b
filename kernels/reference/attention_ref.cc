// Reference attention over a compressed cache. It walks the cache in units of
// at most 32 tokens (one K group of the quantized part, the window, the
// residual, 32 tail rows), dequantizes only that unit, and keeps an online
// softmax in double precision: no dequantized copy of the whole cache.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/compression.h"
#include "kernels/fp16.h"
#include "kernels/reference/quantize_ref.h"
#include "kernels/reference/reference.h"

namespace moend::kernels::ref {
namespace {

// Online softmax state of one query head.
struct HeadState {
  double m = -INFINITY;
  double l = 0;
  std::vector<double> o;
};

class HeadAttender {
 public:
  HeadAttender(int64_t head_dim, int64_t group) : d_(head_dim), states_(group) {
    for (HeadState& s : states_) s.o.assign(d_, 0.0);
    scale_ = 1.0 / std::sqrt(static_cast<double>(d_));
  }

  // krows, vrows: [n, D] floats. qs: [group][D].
  void Unit(const float* krows, const float* vrows, int64_t n, const float* const* qs) {
    std::vector<double> logit(n);
    for (size_t g = 0; g < states_.size(); ++g) {
      HeadState& st = states_[g];
      double mx = st.m;
      for (int64_t t = 0; t < n; ++t) {
        double s = 0;
        for (int64_t i = 0; i < d_; ++i) s += static_cast<double>(qs[g][i]) * krows[t * d_ + i];
        logit[t] = s * scale_;
        mx = std::max(mx, logit[t]);
      }
      const double corr = std::exp(st.m - mx);
      st.l *= corr;
      for (double& v : st.o) v *= corr;
      for (int64_t t = 0; t < n; ++t) {
        const double p = std::exp(logit[t] - mx);
        st.l += p;
        for (int64_t i = 0; i < d_; ++i) st.o[i] += p * vrows[t * d_ + i];
      }
      st.m = mx;
    }
  }

  void Finish(float* const* outs) const {
    for (size_t g = 0; g < states_.size(); ++g) {
      const HeadState& st = states_[g];
      for (int64_t i = 0; i < d_; ++i) {
        outs[g][i] = st.l > 0 ? static_cast<float>(st.o[i] / st.l) : 0.0f;
      }
    }
  }

 private:
  int64_t d_;
  double scale_;
  std::vector<HeadState> states_;
};

// Feeds every unit of one compressed head (quantized, window, residual).
void AttendCompressedHead(const CompressedLayer& layer, int64_t h, HeadAttender& att,
                          const float* const* qs) {
  const LayerFormat& f = layer.format();
  const CompressedHead& hd = layer.head(h);
  const int64_t d = f.head_dim;
  const int kbits = f.KBits(h), vbits = f.VBits(h);  // this head's own bits
  const int64_t krow = PackedRowBytes(d, kbits), vrow = PackedRowBytes(d, vbits);
  const int64_t vgroups = d / kQuantGroup;
  std::vector<float> kbuf(kQuantGroup * d), vbuf(kQuantGroup * d);
  for (int64_t g = 0; g < hd.KeyGroups(); ++g) {
    const int64_t t0 = hd.KeyGroupBegin(g), n = hd.KeyGroupSize(g);
    for (int64_t t = 0; t < n; ++t) {
      const int64_t tok = t0 + t;
      DequantizeKeyRow(hd.k_codes.data() + tok * krow,
                       kbits < kFp16Bits ? hd.k_scale.data() + g * d : nullptr,
                       kbits < kFp16Bits ? hd.k_min.data() + g * d : nullptr, d, kbits,
                       kbuf.data() + t * d);
      DequantizeValueRow(hd.v_codes.data() + tok * vrow,
                         vbits < kFp16Bits ? hd.v_scale.data() + tok * vgroups : nullptr,
                         vbits < kFp16Bits ? hd.v_min.data() + tok * vgroups : nullptr, d,
                         vbits, vbuf.data() + t * d);
    }
    att.Unit(kbuf.data(), vbuf.data(), n, qs);
  }
  for (const auto* part : {&hd.window_k, &hd.residual_k}) {
    const std::vector<uint16_t>& ks = *part;
    const std::vector<uint16_t>& vs = part == &hd.window_k ? hd.window_v : hd.residual_v;
    const int64_t rows = static_cast<int64_t>(ks.size()) / d;
    for (int64_t t0 = 0; t0 < rows; t0 += kQuantGroup) {
      const int64_t n = std::min(kQuantGroup, rows - t0);
      for (int64_t i = 0; i < n * d; ++i) {
        kbuf[i] = HalfToFloat(ks[t0 * d + i]);
        vbuf[i] = HalfToFloat(vs[t0 * d + i]);
      }
      att.Unit(kbuf.data(), vbuf.data(), n, qs);
    }
  }
}

}  // namespace

void DecodeAttention(absl::Span<const CompressedLayer* const> caches, const float* q,
                     int64_t num_heads, float* out) {
  if (caches.empty()) return;
  const LayerFormat& f = caches[0]->format();
  const int64_t d = f.head_dim, group = num_heads / f.num_kv_heads;
  const int64_t work = static_cast<int64_t>(caches.size()) * f.num_kv_heads;
#pragma omp parallel for schedule(dynamic)
  for (int64_t wi = 0; wi < work; ++wi) {
    const int64_t b = wi / f.num_kv_heads, h = wi % f.num_kv_heads;
    std::vector<const float*> qs(group);
    std::vector<float*> outs(group);
    for (int64_t g = 0; g < group; ++g) {
      qs[g] = q + (b * num_heads + h * group + g) * d;
      outs[g] = out + (b * num_heads + h * group + g) * d;
    }
    HeadAttender att(d, group);
    AttendCompressedHead(*caches[b], h, att, qs.data());
    att.Finish(outs.data());
  }
}

void ProbeAttention(const CompressedLayer& prefix, const ProbeQueries& p, float* out) {
  const LayerFormat& f = prefix.format();
  const int64_t d = f.head_dim, group = p.num_heads / f.num_kv_heads;
  const int64_t q_stride = p.q_head_stride ? p.q_head_stride : p.num_queries;
  const int64_t t_stride = p.tail_head_stride ? p.tail_head_stride : p.tail_tokens;
  const int64_t work = p.num_queries * f.num_kv_heads;
#pragma omp parallel for schedule(dynamic)
  for (int64_t wi = 0; wi < work; ++wi) {
    const int64_t i = wi / f.num_kv_heads, h = wi % f.num_kv_heads;
    std::vector<const float*> qs(group);
    std::vector<float*> outs(group);
    for (int64_t g = 0; g < group; ++g) {
      qs[g] = p.q + ((h * group + g) * q_stride + i) * d;
      outs[g] = out + ((h * group + g) * p.num_queries + i) * d;
    }
    HeadAttender att(d, group);
    AttendCompressedHead(prefix, h, att, qs.data());
    const int64_t visible = p.query_offset + i + 1;
    for (int64_t t0 = 0; t0 < visible; t0 += kQuantGroup) {
      const int64_t n = std::min(kQuantGroup, visible - t0);
      att.Unit(p.k_tail + (h * t_stride + t0) * d, p.v_tail + (h * t_stride + t0) * d, n,
               qs.data());
    }
    att.Finish(outs.data());
  }
}

}  // namespace moend::kernels::ref

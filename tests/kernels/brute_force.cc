#include "tests/kernels/brute_force.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace moend::kernels::testing {

std::vector<float> RandomQueries(int64_t n, uint32_t seed) {
  std::vector<float> q(static_cast<size_t>(n));
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 2.0f);
  for (float& x : q) x = g(rng);
  return q;
}

Activations RandomActivations(int64_t hq, int64_t hkv, int64_t n, int64_t d, uint32_t seed, float spread) {
  Activations a{hq, hkv, n, d, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, spread);
  a.q.resize(hq * n * d);
  a.k.resize(hkv * n * d);
  a.v.resize(hkv * n * d);
  for (float& x : a.q) x = g(rng);
  for (float& x : a.k) x = g(rng);
  for (float& x : a.v) x = g(rng);
  return a;
}

std::vector<std::vector<double>> BruteScores(const Activations& x, int64_t c) {
  const int64_t w = std::min<int64_t>(c, 32), cand = std::max<int64_t>(0, c - 32);
  const int64_t group = x.hq / x.hkv;
  std::vector<std::vector<double>> out(x.hkv, std::vector<double>(cand, 0.0));
  for (int64_t h = 0; h < x.hkv; ++h) {
    std::vector<double> raw(cand, 0.0);
    for (int64_t hq = h * group; hq < (h + 1) * group; ++hq) {
      for (int64_t i = c - w; i < c; ++i) {
        std::vector<double> l(i + 1);
        for (int64_t j = 0; j <= i; ++j) {
          double s = 0;
          for (int64_t e = 0; e < x.d; ++e) {
            s += double(x.q[(hq * x.n + i) * x.d + e]) * double(x.k[(h * x.n + j) * x.d + e]);
          }
          l[j] = s / std::sqrt(double(x.d));
        }
        const double mx = *std::max_element(l.begin(), l.end());
        double z = 0;
        for (double v : l) z += std::exp(v - mx);
        for (int64_t j = 0; j < cand; ++j) raw[j] += std::exp(l[j] - mx) / z;
      }
    }
    for (int64_t j = 0; j < cand; ++j) {
      double s = 0;
      int cnt = 0;
      for (int64_t t = j - 3; t <= j + 3; ++t) {
        if (t >= 0 && t < cand) {
          s += raw[t];
          ++cnt;
        }
      }
      out[h][j] = s / cnt;
    }
  }
  return out;
}

std::vector<std::vector<int32_t>> BruteSelect(const std::vector<std::vector<double>>& s, int64_t m) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& row : s) {
    std::vector<int32_t> idx(row.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
    idx.resize(m);
    std::sort(idx.begin(), idx.end());
    out.push_back(idx);
  }
  return out;
}

std::vector<std::vector<int32_t>> BruteSelectF(const std::vector<float>& s, int64_t heads, int64_t cand,
                                               int64_t m) {
  std::vector<std::vector<double>> d(heads);
  for (int64_t h = 0; h < heads; ++h) d[h].assign(s.begin() + h * cand, s.begin() + (h + 1) * cand);
  return BruteSelect(d, m);
}

std::vector<float> BruteFakeQuant(const std::vector<float>& xs, int bits) {
  std::vector<float> out(xs.size());
  if (bits == 16) {
    for (size_t i = 0; i < xs.size(); ++i) out[i] = F16(xs[i]);
    return out;
  }
  const float lo = *std::min_element(xs.begin(), xs.end());
  const float hi = *std::max_element(xs.begin(), xs.end());
  const float qmax = float((1 << bits) - 1);
  const float scale = F16((hi - lo) / qmax), mn = F16(lo);
  for (size_t i = 0; i < xs.size(); ++i) {
    float code = 0;
    if (scale != 0.0f) code = std::clamp(std::floor((xs[i] - mn) / scale + 0.5f), 0.0f, qmax);
    out[i] = code * scale + mn;
  }
  return out;
}

EffectiveHead BruteCompressHead(const float* k, const float* v, int64_t d, const std::vector<int32_t>& kept,
                                int kbits, int vbits, const std::vector<int32_t>& window) {
  EffectiveHead e;
  const int64_t m = kept.size();
  e.k.assign(m, std::vector<float>(d));
  e.v.assign(m, std::vector<float>(d));
  for (int64_t g0 = 0; g0 < m; g0 += 32) {
    const int64_t g1 = std::min<int64_t>(m, g0 + 32);
    for (int64_t c = 0; c < d; ++c) {
      std::vector<float> col;
      for (int64_t t = g0; t < g1; ++t) col.push_back(k[int64_t(kept[t]) * d + c]);
      const std::vector<float> fq = BruteFakeQuant(col, kbits);
      for (int64_t t = g0; t < g1; ++t) e.k[t][c] = fq[t - g0];
    }
  }
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t c0 = 0; c0 < d; c0 += 32) {
      std::vector<float> seg(v + int64_t(kept[t]) * d + c0, v + int64_t(kept[t]) * d + c0 + 32);
      const std::vector<float> fq = BruteFakeQuant(seg, vbits);
      std::copy(fq.begin(), fq.end(), e.v[t].begin() + c0);
    }
  }
  for (int32_t p : window) {
    std::vector<float> kr(d), vr(d);
    for (int64_t c = 0; c < d; ++c) {
      kr[c] = F16(k[int64_t(p) * d + c]);
      vr[c] = F16(v[int64_t(p) * d + c]);
    }
    e.k.push_back(kr);
    e.v.push_back(vr);
  }
  return e;
}

std::vector<double> BruteAttend(const float* q, const std::vector<std::vector<float>>& k,
                                const std::vector<std::vector<float>>& v) {
  const size_t d = k.empty() ? 0 : k[0].size();
  std::vector<double> l(k.size());
  for (size_t t = 0; t < k.size(); ++t) {
    double s = 0;
    for (size_t c = 0; c < d; ++c) s += double(q[c]) * double(k[t][c]);
    l[t] = s / std::sqrt(double(d));
  }
  std::vector<double> o(d, 0.0);
  if (k.empty()) return o;
  const double mx = *std::max_element(l.begin(), l.end());
  double z = 0;
  for (double x : l) z += std::exp(x - mx);
  for (size_t t = 0; t < k.size(); ++t) {
    const double p = std::exp(l[t] - mx) / z;
    for (size_t c = 0; c < d; ++c) o[c] += p * v[t][c];
  }
  return o;
}

double RelSqError(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return den > 0 ? num / den : num;
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - b[i]);
    if (std::isnan(d)) return INFINITY;  // an unwritten (NaN-poisoned) or NaN element fails any bound
    m = std::max(m, d);
  }
  return m;
}

double MaxAbs(const std::vector<float>& a) {
  double m = 0;
  for (float x : a) m = std::max(m, std::fabs(double(x)));
  return m;
}

}  // namespace moend::kernels::testing

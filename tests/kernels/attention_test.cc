// Reference attention over compressed caches vs brute force over the
// dequantized rows (tests/kernels/brute_force.h).
#include <cmath>

#include "core/compression.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/kv_compress.h"
#include "tests/kernels/brute_force.h"

namespace moend::kernels {
namespace {

using testing::Activations;
using testing::RandomActivations;

LayerTensors View(const Activations& a) { return {a.q.data(), a.k.data(), a.v.data(), a.hq, a.hkv, a.n, a.d}; }

// Brute-force rows of head h of a compressed layer built from `a` at c,
// including appended tokens [c, c + appended) (fp16, flushed in groups of 32).
testing::EffectiveHead BruteRows(const Activations& a, const CompressedLayer& layer, int64_t h,
                                 int64_t appended) {
  const int64_t d = a.d, c = layer.prefix_tokens(), w = WindowTokens(c);
  const CompressedHead& hd = layer.head(h);
  const float* k = a.k.data() + h * a.n * d;
  const float* v = a.v.data() + h * a.n * d;
  std::vector<int32_t> kept(hd.position.begin(), hd.position.begin() + hd.initial_kept);
  std::vector<int32_t> window;
  for (int64_t i = c - w; i < c; ++i) window.push_back(static_cast<int32_t>(i));
  testing::EffectiveHead e = testing::BruteCompressHead(k, v, d, kept, layer.format().KBits(h),
                                                        layer.format().VBits(h), window);
  // Flushed groups: quantized from fp16-rounded rows; the residual stays fp16.
  std::vector<float> k16(a.n * d), v16(a.n * d);
  for (int64_t i = 0; i < a.n * d; ++i) {
    k16[i] = testing::F16(k[i]);
    v16[i] = testing::F16(v[i]);
  }
  const int64_t flushed = appended / 32 * 32;
  for (int64_t g = 0; g < flushed; g += 32) {
    std::vector<int32_t> grp;
    for (int64_t i = 0; i < 32; ++i) grp.push_back(static_cast<int32_t>(c + g + i));
    const auto f = testing::BruteCompressHead(k16.data(), v16.data(), d, grp,
                                              layer.format().KBits(h), layer.format().VBits(h), {});
    e.k.insert(e.k.end(), f.k.begin(), f.k.end());
    e.v.insert(e.v.end(), f.v.begin(), f.v.end());
  }
  for (int64_t i = c + flushed; i < c + appended; ++i) {
    e.k.emplace_back(k16.begin() + i * d, k16.begin() + (i + 1) * d);
    e.v.emplace_back(v16.begin() + i * d, v16.begin() + (i + 1) * d);
  }
  return e;
}

TEST(AttentionTest, DecodeMatchesBruteForceForBatchesOfDifferentLengths) {
  struct Case { int64_t hq, hkv, d; CompressionTuple t; };
  for (const Case& cs : {Case{8, 2, 64, {0.5, 4, 2}}, Case{28, 4, 128, {0.25, 2, 8}},
                         Case{4, 4, 64, {1.0, 16, 4}}, Case{6, 2, 128, {0.125, 8, 16}}}) {
    std::vector<Activations> acts;
    std::vector<CompressedLayer> layers;
    const std::vector<int64_t> prefixes = {20, 97, 160, 33};
    const std::vector<int64_t> appends = {0, 3, 40, 32};
    for (size_t b = 0; b < prefixes.size(); ++b) {
      acts.push_back(RandomActivations(cs.hq, cs.hkv, 220, cs.d, 100 + b));
      auto l = CompressLayer(View(acts.back()), prefixes[b], cs.t, Backend::kReference);
      ASSERT_TRUE(l.ok()) << l.status();
      const int64_t c = prefixes[b];
      ASSERT_TRUE(l->Append(acts.back().k.data() + c * cs.d, acts.back().v.data() + c * cs.d, appends[b],
                            acts.back().n).ok());
      layers.push_back(std::move(*l));
    }
    std::vector<const CompressedLayer*> ptrs;
    for (const auto& l : layers) ptrs.push_back(&l);
    std::vector<float> q(prefixes.size() * cs.hq * cs.d), out(q.size(), NAN), expect(q.size());
    std::mt19937 rng(5);
    std::normal_distribution<float> g(0.0f, 2.0f);
    for (float& x : q) x = g(rng);
    ASSERT_TRUE(DecodeAttention(ptrs, q.data(), cs.hq, out.data(), Backend::kReference).ok());
    for (size_t b = 0; b < prefixes.size(); ++b) {
      for (int64_t h = 0; h < cs.hkv; ++h) {
        const auto rows = BruteRows(acts[b], layers[b], h, appends[b]);
        ASSERT_EQ(static_cast<int64_t>(rows.k.size()), layers[b].AttendedTokens(h));
        for (int64_t gq = 0; gq < cs.hq / cs.hkv; ++gq) {
          const int64_t hq = h * (cs.hq / cs.hkv) + gq;
          const auto o = testing::BruteAttend(q.data() + (b * cs.hq + hq) * cs.d, rows.k, rows.v);
          for (int64_t e = 0; e < cs.d; ++e) expect[(b * cs.hq + hq) * cs.d + e] = static_cast<float>(o[e]);
        }
      }
    }
    EXPECT_LT(testing::MaxAbsDiff(out, expect), 1e-5 * testing::MaxAbs(expect)) << ToString(cs.t);
  }
}

TEST(AttentionTest, KeepOneSixteenBitsIsTheFp16CacheExactly) {
  const Activations a = RandomActivations(8, 2, 300, 128, 77);
  const int64_t c = 300, d = 128;
  auto layer = CompressLayer(View(a), c, {1.0, 16, 16}, Backend::kReference);
  ASSERT_TRUE(layer.ok());
  const CompressedLayer* p = &*layer;
  for (int64_t qi : {0, 150, 299}) {
    std::vector<float> q(8 * d), out(8 * d);
    for (int64_t h = 0; h < 8; ++h) std::copy_n(a.q.data() + (h * a.n + qi) * d, d, q.data() + h * d);
    ASSERT_TRUE(DecodeAttention({&p, 1}, q.data(), 8, out.data(), Backend::kReference).ok());
    for (int64_t h = 0; h < 8; ++h) {
      std::vector<std::vector<float>> k, v;
      for (int64_t t = 0; t < c; ++t) {
        std::vector<float> kr(d), vr(d);
        for (int64_t e = 0; e < d; ++e) {
          kr[e] = testing::F16(a.k[((h / 4) * a.n + t) * d + e]);
          vr[e] = testing::F16(a.v[((h / 4) * a.n + t) * d + e]);
        }
        k.push_back(kr);
        v.push_back(vr);
      }
      const auto o = testing::BruteAttend(q.data() + h * d, k, v);
      for (int64_t e = 0; e < d; ++e) {
        // Both in double; only the float rounding of the output differs.
        EXPECT_NEAR(out[h * d + e], o[e], 1e-6 * (1.0 + std::fabs(o[e])));
      }
    }
  }
}

TEST(AttentionTest, ErrorGrowsAsBitsFall) {
  const Activations a = RandomActivations(8, 2, 1024, 128, 31);
  const int64_t c = 1000, d = 128;
  // Exact fp32 attention over the whole uncompressed prefix.
  std::vector<float> q(8 * d);
  for (int64_t h = 0; h < 8; ++h) std::copy_n(a.q.data() + (h * a.n + 1010) * d, d, q.data() + h * d);
  std::vector<float> exact(8 * d);
  for (int64_t h = 0; h < 8; ++h) {
    std::vector<std::vector<float>> k, v;
    for (int64_t t = 0; t < c; ++t) {
      k.emplace_back(a.k.begin() + ((h / 4) * a.n + t) * d, a.k.begin() + ((h / 4) * a.n + t + 1) * d);
      v.emplace_back(a.v.begin() + ((h / 4) * a.n + t) * d, a.v.begin() + ((h / 4) * a.n + t + 1) * d);
    }
    const auto o = testing::BruteAttend(q.data() + h * d, k, v);
    for (int64_t e = 0; e < d; ++e) exact[h * d + e] = static_cast<float>(o[e]);
  }
  double prev = 0;
  for (int bits : {16, 8, 4, 2}) {
    auto layer = CompressLayer(View(a), c, {1.0, bits, bits}, Backend::kReference);
    ASSERT_TRUE(layer.ok());
    const CompressedLayer* p = &*layer;
    std::vector<float> out(8 * d);
    ASSERT_TRUE(DecodeAttention({&p, 1}, q.data(), 8, out.data(), Backend::kReference).ok());
    const double err = testing::RelSqError(out, exact);
    if (bits < 16) {
      EXPECT_GT(err, 2.0 * prev) << bits << " bits";
    }
    EXPECT_LT(err, bits == 16 ? 1e-6 : bits == 8 ? 1e-3 : bits == 4 ? 5e-2 : 1.0) << bits << " bits";
    prev = err;
  }
}

TEST(AttentionTest, ProbesMatchBruteForceCausalTail) {
  const Activations a = RandomActivations(8, 2, 260, 64, 41);
  const int64_t n = 260, c = 200, d = 64, probes = 60;
  for (const CompressionTuple& t : {CompressionTuple{0.5, 2, 4}, CompressionTuple{1.0, 16, 16},
                                    CompressionTuple{0.0625, 8, 2}}) {
    auto layer = CompressLayer(View(a), c, t, Backend::kReference);
    ASSERT_TRUE(layer.ok());
    ProbeQueries pq;
    pq.q = a.q.data() + c * d;
    pq.num_heads = 8;
    pq.num_queries = probes;
    pq.q_head_stride = n;
    pq.k_tail = a.k.data() + c * d;
    pq.v_tail = a.v.data() + c * d;
    pq.tail_tokens = n - c;
    pq.tail_head_stride = n;
    pq.query_offset = 0;
    std::vector<float> out(8 * probes * d), expect(out.size());
    ASSERT_TRUE(ProbeAttention(*layer, pq, out.data(), Backend::kReference).ok());
    for (int64_t h = 0; h < 2; ++h) {
      const auto base = BruteRows(a, *layer, h, 0);
      for (int64_t i = 0; i < probes; ++i) {
        auto rows = base;
        for (int64_t j = c; j <= c + i; ++j) {
          rows.k.emplace_back(a.k.begin() + (h * n + j) * d, a.k.begin() + (h * n + j + 1) * d);
          rows.v.emplace_back(a.v.begin() + (h * n + j) * d, a.v.begin() + (h * n + j + 1) * d);
        }
        for (int64_t gq = 0; gq < 4; ++gq) {
          const int64_t hq = h * 4 + gq;
          const auto o = testing::BruteAttend(a.q.data() + (hq * n + c + i) * d, rows.k, rows.v);
          for (int64_t e = 0; e < d; ++e) expect[(hq * probes + i) * d + e] = static_cast<float>(o[e]);
        }
      }
    }
    EXPECT_LT(testing::MaxAbsDiff(out, expect), 1e-5 * testing::MaxAbs(expect)) << ToString(t);
  }
}

// Per-head tuples (DESIGN.md section 2.9a): every head is attended with its
// own kept tokens and bits, decode (after appends that flush) and probes.
TEST(AttentionTest, MixedLayerMatchesBruteForce) {
  struct Case { int64_t hq, hkv, d; std::vector<CompressionTuple> t; };
  const std::vector<Case> cases = {
      {8, 4, 64, {{0.5, 4, 2}, {0.25, 8, 16}, {1.0, 16, 16}, {0.125, 2, 2}}},
      {12, 4, 128, {{0.0625, 2, 8}, {0.5, 4, 4}, {0.5, 4, 4}, {0.75, 16, 2}}},
      {6, 2, 64, {{0.375, 16, 4}, {0.375, 2, 4}}}};
  for (const Case& cs : cases) {
    const int64_t group = cs.hq / cs.hkv, d = cs.d;
    std::vector<Activations> acts;
    std::vector<CompressedLayer> layers;
    const std::vector<int64_t> prefixes = {20, 97, 160};
    const std::vector<int64_t> appends = {0, 40, 64};
    for (size_t b = 0; b < prefixes.size(); ++b) {
      acts.push_back(RandomActivations(cs.hq, cs.hkv, 240, d, 700 + b));
      auto l = CompressHeads(View(acts.back()), prefixes[b], cs.t, Backend::kReference);
      ASSERT_TRUE(l.ok()) << l.status();
      const int64_t c = prefixes[b];
      ASSERT_TRUE(l->Append(acts.back().k.data() + c * d, acts.back().v.data() + c * d,
                            appends[b], acts.back().n).ok());
      layers.push_back(std::move(*l));
    }
    std::vector<const CompressedLayer*> ptrs;
    for (const auto& l : layers) ptrs.push_back(&l);
    std::vector<float> q(prefixes.size() * cs.hq * d), out(q.size(), NAN), expect(q.size());
    std::mt19937 rng(6);
    std::normal_distribution<float> g(0.0f, 2.0f);
    for (float& x : q) x = g(rng);
    ASSERT_TRUE(DecodeAttention(ptrs, q.data(), cs.hq, out.data(), Backend::kReference).ok());
    for (size_t b = 0; b < prefixes.size(); ++b) {
      for (int64_t h = 0; h < cs.hkv; ++h) {
        const auto rows = BruteRows(acts[b], layers[b], h, appends[b]);
        ASSERT_EQ(static_cast<int64_t>(rows.k.size()), layers[b].AttendedTokens(h));
        for (int64_t gq = 0; gq < group; ++gq) {
          const int64_t hq = h * group + gq;
          const auto o = testing::BruteAttend(q.data() + (b * cs.hq + hq) * d, rows.k, rows.v);
          for (int64_t e = 0; e < d; ++e) expect[(b * cs.hq + hq) * d + e] = static_cast<float>(o[e]);
        }
      }
    }
    EXPECT_LT(testing::MaxAbsDiff(out, expect), 1e-5 * testing::MaxAbs(expect))
        << "decode hq " << cs.hq << " hkv " << cs.hkv;

    // Probes over the first prefix's layer (no appends), causal tail.
    const Activations& a = acts[1];
    const int64_t n = a.n, c = 180, probes = 40;
    auto layer = CompressHeads(View(a), c, cs.t, Backend::kReference);
    ASSERT_TRUE(layer.ok());
    ProbeQueries pq;
    pq.q = a.q.data() + c * d;
    pq.num_heads = cs.hq;
    pq.num_queries = probes;
    pq.q_head_stride = n;
    pq.k_tail = a.k.data() + c * d;
    pq.v_tail = a.v.data() + c * d;
    pq.tail_tokens = n - c;
    pq.tail_head_stride = n;
    std::vector<float> pout(cs.hq * probes * d), pexpect(pout.size());
    ASSERT_TRUE(ProbeAttention(*layer, pq, pout.data(), Backend::kReference).ok());
    for (int64_t h = 0; h < cs.hkv; ++h) {
      const auto base = BruteRows(a, *layer, h, 0);
      for (int64_t i = 0; i < probes; ++i) {
        auto rows = base;
        for (int64_t j = c; j <= c + i; ++j) {
          rows.k.emplace_back(a.k.begin() + (h * n + j) * d, a.k.begin() + (h * n + j + 1) * d);
          rows.v.emplace_back(a.v.begin() + (h * n + j) * d, a.v.begin() + (h * n + j + 1) * d);
        }
        for (int64_t gq = 0; gq < group; ++gq) {
          const int64_t hq = h * group + gq;
          const auto o = testing::BruteAttend(a.q.data() + (hq * n + c + i) * d, rows.k, rows.v);
          for (int64_t e = 0; e < d; ++e) pexpect[(hq * probes + i) * d + e] = static_cast<float>(o[e]);
        }
      }
    }
    EXPECT_LT(testing::MaxAbsDiff(pout, pexpect), 1e-5 * testing::MaxAbs(pexpect))
        << "probes hq " << cs.hq << " hkv " << cs.hkv;
  }
}

}  // namespace
}  // namespace moend::kernels

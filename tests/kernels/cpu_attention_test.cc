// The CPU attention kernel (kernels/cpu_attention.h) against the reference
// DecodeAttention over the same CompressedLayer caches, for every instruction
// set this machine has.
//
// Tolerance: max |cpu - ref| <= RelTol(kbits) * max |ref| + 1e-6, where
// RelTol is 1e-5 for fp16 K and 2e-5 for quantized K (any V bits). The
// kernel computes in float32 (the reference in double) and folds
// the K scale into the query (q.(c*s + m) = (q*s).c + q.m), so its error is
// float rounding of D-term dots (logits err ~ D * 2^-24 * |q| |k|, a few 1e-6
// at D = 128 with these magnitudes; the softmax turns it into a relative error
// of the same order) plus the sums over the tokens (the portable path's
// sequential float sums are the worst) and the AVX2 exp polynomial (2e-7).
// V bits do not change the error (codes and scales are exact in float; the
// min term is added once per unit); quantized K adds the folding's
// cancellation (|q.m| ~ |q.k|). Measured worst cases (the tests print them):
// up to ~1000 tokens 0.9e-6 * max|ref| for fp16 K and 1.8e-6 for 2/4/8-bit
// K; at 4096 tokens 2.5e-6 and 3.8e-6. The bounds leave a 4x margin at
// 4096 tokens; dropping a min term or masking the residual wrongly gives
// errors of order max|ref| (tried).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "core/compression.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/cpu_attention.h"
#include "kernels/kv_compress.h"
#include "tests/kernels/brute_force.h"

namespace moend::kernels {
namespace {

using testing::Activations;
using testing::RandomActivations;

double RelTol(int kbits) { return kbits == 16 ? 1e-5 : 2e-5; }
constexpr double kAbsTol = 1e-6;

std::vector<CpuIsa> AvailableIsas() {
  std::vector<CpuIsa> isas;
  const AttentionShape shape{4, 2, 64};
  for (CpuIsa isa : {CpuIsa::kPortable, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (CpuAttention({}, shape, isa).ok()) isas.push_back(isa);
  }
  return isas;
}

// Compresses a prefix of `prefix` tokens of `a` and appends `appended` tokens
// after it (flushing a K group per 32).
CompressedLayer Build(const Activations& a, int64_t prefix, int64_t appended,
                      const CompressionTuple& t) {
  const LayerTensors x{a.q.data(), a.k.data(), a.v.data(), a.hq, a.hkv, a.n, a.d};
  auto l = CompressLayer(x, prefix, t, Backend::kReference);
  EXPECT_TRUE(l.ok()) << l.status();
  EXPECT_TRUE(l->Append(a.k.data() + prefix * a.d, a.v.data() + prefix * a.d, appended, a.n).ok());
  return std::move(*l);
}

double Bound(const std::vector<float>& ref, int kbits) {
  return RelTol(kbits) * testing::MaxAbs(ref) + kAbsTol;
}

struct Shape {
  int64_t hq, hkv, d;
};

// Decode (rows = 1) over several sequences of different lengths in one call.
// Returns max |cpu - ref| / max |ref| over the ISAs.
double DecodeCase(const Shape& s, int kbits, int vbits, double keep) {
  const std::vector<int64_t> prefixes = {20, 97, 160, 33, 1000};
  const std::vector<int64_t> appends = {0, 3, 40, 32, 75};
  std::vector<CompressedLayer> layers;
  for (size_t b = 0; b < prefixes.size(); ++b) {
    const Activations a = RandomActivations(s.hq, s.hkv, prefixes[b] + appends[b], s.d,
                                            static_cast<uint32_t>(300 + b));
    layers.push_back(Build(a, prefixes[b], appends[b], {keep, kbits, vbits}));
  }
  const int64_t batch = static_cast<int64_t>(layers.size()), row = s.hq * s.d;
  std::vector<const CompressedLayer*> ptrs;
  for (const auto& l : layers) ptrs.push_back(&l);
  const std::vector<float> q = testing::RandomQueries(batch * row, 9);
  std::vector<float> ref(q.size());
  EXPECT_TRUE(DecodeAttention(ptrs, q.data(), s.hq, ref.data(), Backend::kReference).ok());

  std::vector<std::vector<HeadView>> views(batch);
  std::vector<AttentionItem> items(batch);
  std::vector<float> out(q.size());
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < s.hkv; ++h) views[b].push_back(layers[b].View(h));
    items[b].heads = views[b].data();
    items[b].q = q.data() + b * row;
    items[b].out = out.data() + b * row;
    items[b].residual_visible = layers[b].residual_tokens();
  }
  double worst = 0;
  for (CpuIsa isa : AvailableIsas()) {
    std::fill(out.begin(), out.end(), NAN);
    const absl::Status st = CpuAttention(items, {s.hq, s.hkv, s.d}, isa);
    EXPECT_TRUE(st.ok()) << st;
    const double diff = testing::MaxAbsDiff(out, ref);
    EXPECT_LE(diff, Bound(ref, kbits)) << CpuIsaName(isa) << " hq " << s.hq << " hkv " << s.hkv
                                       << " D " << s.d << " bits " << kbits << "," << vbits;
    worst = std::max(worst, diff / testing::MaxAbs(ref));
  }
  return worst;
}

TEST(CpuAttentionTest, IsasIncludePortableAndBest) {
  const std::vector<CpuIsa> isas = AvailableIsas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas[0], CpuIsa::kPortable);
  EXPECT_EQ(isas.back(), BestCpuIsa());
  for (CpuIsa isa : isas) std::printf("testing ISA %s\n", CpuIsaName(isa).c_str());
}

TEST(CpuAttentionTest, DecodeMatchesReferenceForEveryBitPairAndShape) {
  // GQA groups 1, 2 and 7 at D 64 and 128.
  const std::vector<Shape> shapes = {{4, 4, 64}, {8, 4, 128}, {14, 2, 64}, {7, 1, 128}};
  const std::vector<double> keeps = {0.5, 1.0, 0.25, 0.125};
  for (int kbits : {2, 4, 8, 16}) {
    for (int vbits : {2, 4, 8, 16}) {
      double worst = 0;
      for (size_t i = 0; i < shapes.size(); ++i) {
        worst = std::max(worst, DecodeCase(shapes[i], kbits, vbits, keeps[i]));
      }
      std::printf("bits (%d,%d): max |cpu - ref| / max |ref| = %.2e\n", kbits, vbits, worst);
    }
  }
}

// 4096-token contexts: the fp32 sums run over 4x more tokens than above.
TEST(CpuAttentionTest, LongContextStaysWithinTolerance) {
  for (const CompressionTuple& t : {CompressionTuple{1.0, 2, 2}, CompressionTuple{1.0, 16, 16},
                                    CompressionTuple{0.5, 4, 8}}) {
    const Shape s{7, 1, 128};
    const Activations a = RandomActivations(s.hq, s.hkv, 4096, s.d, 21);
    const CompressedLayer layer = Build(a, 4080, 16, t);
    const CompressedLayer* p = &layer;
    const std::vector<float> q = testing::RandomQueries(s.hq * s.d, 4);
    std::vector<float> ref(q.size()), out(q.size());
    ASSERT_TRUE(DecodeAttention({&p, 1}, q.data(), s.hq, ref.data(), Backend::kReference).ok());
    const HeadView view = layer.View(0);
    const AttentionItem it{&view, q.data(), out.data(), 0, 0, 1, layer.residual_tokens()};
    for (CpuIsa isa : AvailableIsas()) {
      ASSERT_TRUE(CpuAttention({&it, 1}, {s.hq, s.hkv, s.d}, isa).ok());
      const double diff = testing::MaxAbsDiff(out, ref);
      EXPECT_LE(diff, Bound(ref, t.kbits)) << CpuIsaName(isa) << " " << ToString(t);
      std::printf("%s %s: max |cpu - ref| / max |ref| = %.2e\n", CpuIsaName(isa).c_str(),
                  ToString(t).c_str(), diff / testing::MaxAbs(ref));
    }
  }
}

// Items of several rows: row r sees residual rows [0, min(residual,
// residual_visible + r)); checked against the reference over a copy of the
// cache whose residual is cut to that length. Strided q and out rows.
TEST(CpuAttentionTest, MultiRowItemsMatchReferencePerRowWithTruncatedResidual) {
  struct Case {
    Shape s;
    CompressionTuple t;
  };
  for (const Case& cs : {Case{{4, 4, 64}, {0.5, 2, 2}}, Case{{8, 4, 128}, {0.25, 4, 8}},
                         Case{{14, 2, 64}, {1.0, 16, 16}}, Case{{7, 1, 128}, {0.5, 8, 2}},
                         Case{{4, 2, 64}, {0.5, 16, 4}}}) {
    const Shape& s = cs.s;
    // Residuals 13 and 29 (after a flush), and 0.
    const std::vector<int64_t> prefixes = {150, 70, 40};
    const std::vector<int64_t> appends = {13, 61, 0};
    const std::vector<int64_t> rows = {5, 3, 2};
    const std::vector<int64_t> visible = {10, 28, 0};
    const int64_t row = s.hq * s.d, q_stride = row + 8, out_stride = row + 24;
    std::vector<CompressedLayer> layers;
    for (size_t b = 0; b < prefixes.size(); ++b) {
      const Activations a = RandomActivations(s.hq, s.hkv, prefixes[b] + appends[b], s.d,
                                              static_cast<uint32_t>(500 + b));
      layers.push_back(Build(a, prefixes[b], appends[b], cs.t));
    }
    const int64_t batch = static_cast<int64_t>(layers.size());
    std::vector<std::vector<HeadView>> views(batch);
    std::vector<std::vector<float>> qs(batch), outs(batch);
    std::vector<AttentionItem> items(batch);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t h = 0; h < s.hkv; ++h) views[b].push_back(layers[b].View(h));
      qs[b] = testing::RandomQueries(rows[b] * q_stride, static_cast<uint32_t>(77 + b));
      outs[b].assign(rows[b] * out_stride, -7.0f);
      items[b] = {views[b].data(), qs[b].data(), outs[b].data(), q_stride, out_stride, rows[b],
                  visible[b]};
    }
    for (CpuIsa isa : AvailableIsas()) {
      for (auto& o : outs) std::fill(o.begin(), o.end(), -7.0f);
      ASSERT_TRUE(CpuAttention(items, {s.hq, s.hkv, s.d}, isa).ok());
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t r = 0; r < rows[b]; ++r) {
          CompressedLayer cut = layers[b];
          const int64_t keep = std::min(cut.residual_tokens(), visible[b] + r);
          for (int64_t h = 0; h < s.hkv; ++h) {
            cut.head(h).residual_k.resize(keep * s.d);
            cut.head(h).residual_v.resize(keep * s.d);
          }
          const CompressedLayer* p = &cut;
          std::vector<float> ref(row);
          ASSERT_TRUE(DecodeAttention({&p, 1}, qs[b].data() + r * q_stride, s.hq, ref.data(),
                                      Backend::kReference)
                          .ok());
          const std::vector<float> got(outs[b].begin() + r * out_stride,
                                       outs[b].begin() + r * out_stride + row);
          EXPECT_LE(testing::MaxAbsDiff(got, ref), Bound(ref, cs.t.kbits))
              << CpuIsaName(isa) << " " << ToString(cs.t) << " item " << b << " row " << r;
          // The padding between rows is left alone.
          for (int64_t e = row; e < out_stride; ++e) {
            ASSERT_EQ(outs[b][r * out_stride + e], -7.0f);
          }
        }
      }
    }
  }
}

// Per-head tuples (DESIGN.md section 2.9a): heads of one layer differ in kept
// count and bits; the kernel reads each head's bits from its HeadView. Decode
// over a batch (after appends that flush), and multi-row items whose rows see
// a growing part of the residual.
TEST(CpuAttentionTest, MixedLayersMatchReference) {
  struct Case {
    Shape s;
    std::vector<CompressionTuple> t;
  };
  const std::vector<Case> cases = {
      {{8, 4, 64}, {{0.5, 4, 2}, {0.25, 8, 16}, {1.0, 16, 16}, {0.125, 2, 2}}},
      {{12, 4, 128}, {{0.0625, 2, 8}, {0.5, 4, 4}, {0.5, 4, 4}, {0.75, 16, 2}}},
      {{6, 2, 64}, {{0.375, 16, 4}, {0.375, 2, 16}}}};
  for (const Case& cs : cases) {
    const Shape& s = cs.s;
    const std::vector<int64_t> prefixes = {20, 97, 300};
    const std::vector<int64_t> appends = {0, 40, 77};
    std::vector<CompressedLayer> layers;
    for (size_t b = 0; b < prefixes.size(); ++b) {
      const Activations a = RandomActivations(s.hq, s.hkv, prefixes[b] + appends[b], s.d,
                                              static_cast<uint32_t>(900 + b));
      const LayerTensors x{a.q.data(), a.k.data(), a.v.data(), a.hq, a.hkv, a.n, a.d};
      auto l = CompressHeads(x, prefixes[b], cs.t, Backend::kReference);
      ASSERT_TRUE(l.ok()) << l.status();
      ASSERT_TRUE(l->Append(a.k.data() + prefixes[b] * a.d, a.v.data() + prefixes[b] * a.d,
                            appends[b], a.n).ok());
      ASSERT_FALSE(l->format().Uniform());
      layers.push_back(std::move(*l));
    }
    const int64_t batch = static_cast<int64_t>(layers.size()), row = s.hq * s.d;
    std::vector<const CompressedLayer*> ptrs;
    for (const auto& l : layers) ptrs.push_back(&l);
    std::vector<std::vector<HeadView>> views(batch);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t h = 0; h < s.hkv; ++h) {
        views[b].push_back(layers[b].View(h));
        ASSERT_EQ(views[b][h].kbits, cs.t[h].kbits);
        ASSERT_EQ(views[b][h].vbits, cs.t[h].vbits);
      }
    }
    // Decode: one row per item.
    const std::vector<float> q = testing::RandomQueries(batch * row, 19);
    std::vector<float> ref(q.size()), out(q.size());
    ASSERT_TRUE(DecodeAttention(ptrs, q.data(), s.hq, ref.data(), Backend::kReference).ok());
    std::vector<AttentionItem> items(batch);
    for (int64_t b = 0; b < batch; ++b) {
      items[b].heads = views[b].data();
      items[b].q = q.data() + b * row;
      items[b].out = out.data() + b * row;
      items[b].residual_visible = layers[b].residual_tokens();
    }
    for (CpuIsa isa : AvailableIsas()) {
      std::fill(out.begin(), out.end(), NAN);
      const absl::Status st = CpuAttention(items, {s.hq, s.hkv, s.d}, isa);
      ASSERT_TRUE(st.ok()) << st;
      EXPECT_LE(testing::MaxAbsDiff(out, ref), Bound(ref, 2))
          << CpuIsaName(isa) << " decode hq " << s.hq << " hkv " << s.hkv;
    }
    // Multi-row: item 2 (residual 13) with 4 rows, rows see 10 + r residual rows.
    const int64_t rows = 4, visible = 10;
    const std::vector<float> mq = testing::RandomQueries(rows * row, 29);
    std::vector<float> mout(rows * row);
    const AttentionItem multi{views[2].data(), mq.data(), mout.data(), 0, 0, rows, visible};
    for (CpuIsa isa : AvailableIsas()) {
      std::fill(mout.begin(), mout.end(), NAN);
      ASSERT_TRUE(CpuAttention({&multi, 1}, {s.hq, s.hkv, s.d}, isa).ok());
      for (int64_t r = 0; r < rows; ++r) {
        CompressedLayer cut = layers[2];
        const int64_t keep = std::min(cut.residual_tokens(), visible + r);
        for (int64_t h = 0; h < s.hkv; ++h) {
          cut.head(h).residual_k.resize(keep * s.d);
          cut.head(h).residual_v.resize(keep * s.d);
        }
        const CompressedLayer* p = &cut;
        std::vector<float> mref(row);
        ASSERT_TRUE(DecodeAttention({&p, 1}, mq.data() + r * row, s.hq, mref.data(),
                                    Backend::kReference)
                        .ok());
        const std::vector<float> got(mout.begin() + r * row, mout.begin() + (r + 1) * row);
        EXPECT_LE(testing::MaxAbsDiff(got, mref), Bound(mref, 2))
            << CpuIsaName(isa) << " row " << r << " hq " << s.hq << " hkv " << s.hkv;
      }
    }
  }
}

TEST(CpuAttentionTest, BadInputIsInvalidArgument) {
  const Activations a = RandomActivations(4, 2, 100, 64, 3);
  const CompressedLayer layer = Build(a, 90, 5, {0.5, 4, 4});
  std::vector<HeadView> views = {layer.View(0), layer.View(1)};
  std::vector<float> q(4 * 64, 1.0f), out(4 * 64);
  const AttentionItem good{views.data(), q.data(), out.data(), 0, 0, 1, 5};
  const AttentionShape shape{4, 2, 64};
  ASSERT_TRUE(CpuAttention({&good, 1}, shape, CpuIsa::kPortable).ok());

  auto expect_invalid = [&](const AttentionItem& it, const AttentionShape& sh, const char* what) {
    for (CpuIsa isa : AvailableIsas()) {
      const absl::Status st = CpuAttention({&it, 1}, sh, isa);
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << what << ": " << st;
    }
  };
  AttentionItem it = good;
  it.heads = nullptr;
  expect_invalid(it, shape, "null heads");
  it = good;
  it.q = nullptr;
  expect_invalid(it, shape, "null q");
  it = good;
  it.out = nullptr;
  expect_invalid(it, shape, "null out");
  expect_invalid(good, {4, 2, 96}, "head dim 96");
  expect_invalid(good, {6, 4, 64}, "H not a multiple of Hkv");
  expect_invalid(good, {4, 0, 64}, "no KV heads");
  it = good;
  it.q_row_stride = 10;
  it.rows = 2;
  expect_invalid(it, shape, "short q row stride");
  it = good;
  it.residual_visible = -1;
  expect_invalid(it, shape, "negative residual_visible");
  std::vector<HeadView> bad = views;
  bad[1].kbits = 3;
  it = good;
  it.heads = bad.data();
  expect_invalid(it, shape, "K bits 3");
  bad = views;
  bad[0].vbits = 3;
  expect_invalid(it, shape, "V bits 3");
  bad = views;
  bad[0].k_scale = nullptr;
  expect_invalid(it, shape, "null K scale");
  bad = views;
  bad[0].quantized += 5;
  expect_invalid(it, shape, "quantized not initial_kept + 32k");
  bad = views;
  bad[1].residual_k = nullptr;
  expect_invalid(it, shape, "null residual");
}

TEST(CpuAttentionTest, MissingInstructionSetIsFailedPrecondition) {
  const std::vector<CpuIsa> isas = AvailableIsas();
  const AttentionShape shape{4, 2, 64};
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (std::find(isas.begin(), isas.end(), isa) != isas.end()) continue;
    EXPECT_EQ(CpuAttention({}, shape, isa).code(), absl::StatusCode::kFailedPrecondition)
        << CpuIsaName(isa);
  }
  EXPECT_TRUE(CpuAttention({}, shape, CpuIsa::kBest).ok());
}

TEST(CpuAttentionTest, EmptyHeadGivesZeros) {
  HeadView empty;  // no tokens at all
  empty.kbits = 2;
  empty.vbits = 2;
  std::vector<HeadView> views = {empty};
  std::vector<float> q(2 * 64, 1.0f), out(2 * 64, NAN);
  const AttentionItem it{views.data(), q.data(), out.data(), 0, 0, 1, 0};
  for (CpuIsa isa : AvailableIsas()) {
    ASSERT_TRUE(CpuAttention({&it, 1}, {2, 1, 64}, isa).ok());
    for (float x : out) ASSERT_EQ(x, 0.0f);
  }
}

}  // namespace
}  // namespace moend::kernels

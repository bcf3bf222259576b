// Reference compression vs the brute force of tests/kernels/brute_force.h,
// and the byte accounting against core's LayerBytes().
#include <algorithm>
#include <cmath>
#include <span>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/compression.h"
#include "gtest/gtest.h"
#include "kernels/fp16.h"
#include "kernels/kv_compress.h"
#include "kernels/reference/quantize_ref.h"
#include "tests/kernels/brute_force.h"
#include "tests/kernels/same_head.h"

namespace moend::kernels {
namespace {

using testing::Activations;
using testing::RandomActivations;

LayerTensors View(const Activations& a) {
  return {a.q.data(), a.k.data(), a.v.data(), a.hq, a.hkv, a.n, a.d};
}

TEST(CompressTest, ScoresMatchBruteForce) {
  for (int64_t c : {33, 40, 77, 150, 211}) {
    const Activations a = RandomActivations(8, 2, c + 5, 64, 11 + c, 1.5f);
    auto s = ComputeEvictionScores(View(a), c, Backend::kReference);
    ASSERT_TRUE(s.ok()) << s.status();
    const auto brute = testing::BruteScores(a, c);
    ASSERT_EQ(s->candidates, c - 32);
    double max_score = 0, max_diff = 0;
    for (int64_t h = 0; h < a.hkv; ++h) {
      for (int64_t j = 0; j < c - 32; ++j) {
        max_score = std::max(max_score, brute[h][j]);
        max_diff = std::max(max_diff, std::fabs(brute[h][j] - s->score[h * (c - 32) + j]));
      }
    }
    EXPECT_LT(max_diff, 1e-5 * max_score) << "c=" << c;
  }
}

TEST(CompressTest, SelectionMatchesBruteForceIncludingTies) {
  EvictionScores s{3, 132, 100, std::vector<float>(300)};
  for (int j = 0; j < 100; ++j) {
    s.score[j] = 1.0f;                             // head 0: all tied -> lowest indices
    s.score[100 + j] = float((j * 37) % 11);       // head 1: many ties
    s.score[200 + j] = float(j % 2) + 1e-3f * j;   // head 2: distinct
  }
  for (int64_t m : {0, 1, 7, 50, 99, 100}) {
    auto kept = SelectKept(s, m, Backend::kReference);
    ASSERT_TRUE(kept.ok()) << kept.status();
    const auto brute = testing::BruteSelectF(s.score, 3, 100, m);
    for (int h = 0; h < 3; ++h) {
      std::vector<int32_t> got(kept->index.begin() + h * m, kept->index.begin() + (h + 1) * m);
      EXPECT_EQ(got, brute[h]) << "head " << h << " m " << m;
    }
  }
}

// Dequantized kept tokens equal the brute-force fake quantization, and the
// rounding error is within half a quantization step.
void CheckQuantized(const Activations& a, int64_t c, const CompressionTuple& t) {
  auto layer = CompressLayer(View(a), c, t, Backend::kReference);
  ASSERT_TRUE(layer.ok()) << layer.status();
  const int64_t d = a.d, m = KeptTokens(t.keep, c), w = WindowTokens(c);
  for (int64_t h = 0; h < a.hkv; ++h) {
    const CompressedHead& hd = layer->head(h);
    ASSERT_EQ(hd.quantized, m);
    std::vector<int32_t> window;
    for (int64_t i = c - w; i < c; ++i) window.push_back(static_cast<int32_t>(i));
    const auto eff = testing::BruteCompressHead(a.k.data() + h * a.n * d, a.v.data() + h * a.n * d, d,
                                                hd.position, t.kbits, t.vbits, window);
    std::vector<float> row(d);
    for (int64_t tok = 0; tok < m; ++tok) {
      const int64_t g = tok / 32;
      ref::DequantizeKeyRow(hd.k_codes.data() + tok * PackedRowBytes(d, t.kbits),
                            t.kbits < 16 ? hd.k_scale.data() + g * d : nullptr,
                            t.kbits < 16 ? hd.k_min.data() + g * d : nullptr, d, t.kbits, row.data());
      for (int64_t e = 0; e < d; ++e) {
        ASSERT_EQ(row[e], eff.k[tok][e]) << "K tok " << tok << " ch " << e << " " << ToString(t);
        if (t.kbits < 16) {
          const float step = HalfToFloat(hd.k_scale[g * d + e]);
          const float x = a.k[(h * a.n + hd.position[tok]) * d + e];
          ASSERT_LE(std::fabs(row[e] - x), 0.5f * step + 2e-3f * std::fabs(x) + 1e-6f);
        }
      }
      ref::DequantizeValueRow(hd.v_codes.data() + tok * PackedRowBytes(d, t.vbits),
                              t.vbits < 16 ? hd.v_scale.data() + tok * (d / 32) : nullptr,
                              t.vbits < 16 ? hd.v_min.data() + tok * (d / 32) : nullptr, d, t.vbits, row.data());
      for (int64_t e = 0; e < d; ++e) ASSERT_EQ(row[e], eff.v[tok][e]) << "V tok " << tok << " ch " << e;
    }
    for (int64_t i = 0; i < w * d; ++i) {
      ASSERT_EQ(HalfToFloat(hd.window_k[i]), eff.k[m + i / d][i % d]);
      ASSERT_EQ(HalfToFloat(hd.window_v[i]), eff.v[m + i / d][i % d]);
    }
  }
}

TEST(CompressTest, QuantizationMatchesBruteForceOnRandomData) {
  const Activations a = RandomActivations(4, 2, 300, 64, 3);
  for (const CompressionTuple& t : TupleGrid{{1.0, 0.5, 0.0625}, {16, 8, 4, 2}, {16, 8, 4, 2}}.Tuples()) {
    CheckQuantized(a, 271, t);
  }
}

TEST(CompressTest, QuantizationAdversarialData) {
  Activations a = RandomActivations(4, 2, 200, 128, 5);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t t = 0; t < a.n; ++t) {
      float* k = &a.k[(h * a.n + t) * 128];
      float* v = &a.v[(h * a.n + t) * 128];
      k[3] = 0.75f;           // constant channel: scale 0, every code 0
      k[5] = -2.0f;
      v[40] = 1e-9f;          // denormal-ish channel inside a V group
      if (t % 17 == 0) k[7] = 300.0f;    // outliers
      if (t % 23 == 0) v[64] = -500.0f;
      for (int e = 96; e < 128; ++e) v[e] = 0.125f;  // constant V group
    }
  }
  for (const CompressionTuple& t : {CompressionTuple{0.75, 2, 2}, CompressionTuple{0.375, 4, 8},
                                    CompressionTuple{1.0, 8, 4}, CompressionTuple{0.25, 16, 2}}) {
    CheckQuantized(a, 199, t);
  }
}

TEST(CompressTest, WindowOnlyAndNothingKept) {
  const Activations a = RandomActivations(4, 2, 40, 64, 9);
  for (int64_t c : {1, 5, 32}) {
    auto layer = CompressLayer(View(a), c, {0.5, 4, 4}, Backend::kReference);
    ASSERT_TRUE(layer.ok()) << layer.status();
    EXPECT_EQ(layer->head(0).quantized, 0);
    EXPECT_EQ(layer->window_tokens(), c);
    EXPECT_EQ(layer->Bytes(), LayerBytes({2, 64}, {0.5, 4, 4}, c));
  }
  // c = 40: 8 candidates, keep 0.0625 -> round(0.5) = 1; keep 0.05 -> 0 kept.
  auto none = CompressLayer(View(a), 40, {0.05, 2, 2}, Backend::kReference);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->head(1).quantized, 0);
  EXPECT_EQ(none->Bytes(), LayerBytes({2, 64}, {0.05, 2, 2}, 40));
  CheckQuantized(a, 40, {0.05, 2, 2});
  CheckQuantized(a, 40, {0.0625, 2, 2});
}

TEST(CompressTest, BytesEqualLayerBytesForTheWholeGrid) {
  const Activations a = RandomActivations(4, 2, 400, 64, 21);
  for (int64_t c : {33, 97, 333, 400}) {
    auto scores = ComputeEvictionScores(View(a), c, Backend::kReference);
    ASSERT_TRUE(scores.ok());
    for (const CompressionTuple& t : TupleGrid::Default().Tuples()) {
      auto kept = SelectKept(*scores, KeptTokens(t.keep, c), Backend::kReference);
      ASSERT_TRUE(kept.ok());
      auto layer = QuantizeKept(View(a), *kept, t.kbits, t.vbits, Backend::kReference);
      ASSERT_TRUE(layer.ok()) << layer.status();
      EXPECT_EQ(layer->Bytes(), LayerBytes({2, 64}, t, c)) << ToString(t) << " c=" << c;
    }
  }
}

TEST(CompressTest, AppendFlushesGroupsOf32AndBytesFollowTheFormula) {
  const Activations a = RandomActivations(4, 2, 500, 128, 23);
  const int64_t c = 300, d = 128;
  for (const CompressionTuple& t : {CompressionTuple{0.5, 2, 4}, CompressionTuple{0.25, 8, 16},
                                    CompressionTuple{1.0, 16, 16}}) {
    auto layer = CompressLayer(View(a), c, t, Backend::kReference);
    ASSERT_TRUE(layer.ok());
    const int64_t m0 = KeptTokens(t.keep, c);
    int64_t appended = 0;
    for (int64_t step : {1, 5, 26, 1, 40, 31, 1, 64}) {
      // Append rows c+appended .. from the activations (head stride n).
      ASSERT_TRUE(layer->Append(a.k.data() + (c + appended) * d, a.v.data() + (c + appended) * d, step, a.n).ok());
      appended += step;
      const int64_t flushed = appended / 32 * 32, residual = appended % 32;
      ASSERT_EQ(layer->residual_tokens(), residual);
      ASSERT_EQ(layer->head(0).quantized, m0 + flushed);
      const int64_t expect = 2 * (PackedKeyBytes(m0 + flushed, d, t.kbits) +
                                  PackedValueBytes(m0 + flushed, d, t.vbits) + 32 * d * 4 + residual * d * 4);
      ASSERT_EQ(layer->Bytes(), expect) << ToString(t) << " appended " << appended;
    }
    // Flushed K groups are full groups of 32 with their own scale/min; values
    // are the brute-force quantization of the fp16 residual rows.
    const CompressedHead& hd = layer->head(1);
    for (int64_t g = (m0 + 31) / 32; g < hd.KeyGroups(); ++g) {
      ASSERT_EQ(hd.KeyGroupSize(g), 32);
      const int64_t b = hd.KeyGroupBegin(g);
      for (int64_t e = 0; e < d; e += 17) {
        std::vector<float> col;
        for (int64_t i = 0; i < 32; ++i) col.push_back(testing::F16(a.k[(a.n + hd.position[b + i]) * d + e]));
        const auto fq = testing::BruteFakeQuant(col, t.kbits);
        std::vector<float> row(d);
        for (int64_t i = 0; i < 32; ++i) {
          ref::DequantizeKeyRow(hd.k_codes.data() + (b + i) * PackedRowBytes(d, t.kbits),
                                t.kbits < 16 ? hd.k_scale.data() + g * d : nullptr,
                                t.kbits < 16 ? hd.k_min.data() + g * d : nullptr, d, t.kbits, row.data());
          ASSERT_EQ(row[e], fq[i]);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Per-head tuples (DESIGN.md section 2.9a).

// Four KV heads, each with its own keep and bits (one repeated: heads 1 and 3
// share a tuple, so CompressHeads groups them).
const std::vector<CompressionTuple> kMixed = {
    {0.5, 4, 2}, {0.25, 8, 16}, {1.0, 16, 16}, {0.25, 8, 16}};
const std::vector<CompressionTuple> kMixed2 = {
    {0.125, 2, 2}, {0.5, 4, 8}, {0.0625, 16, 4}, {1.0, 2, 16}};

using moend::testing::ExpectSameHead;

// Sum over heads of PackedKeyBytes + PackedValueBytes + window (fp16 K and V).
int64_t PerHeadBytes(const std::vector<CompressionTuple>& tuples, int64_t c, int64_t d) {
  int64_t bytes = 0;
  for (const CompressionTuple& t : tuples) {
    const int64_t m = KeptTokens(t.keep, c);
    bytes += PackedKeyBytes(m, d, t.kbits) + PackedValueBytes(m, d, t.vbits) +
             WindowTokens(c) * d * 4;
  }
  return bytes;
}

TEST(CompressTest, MixedLayerBytesAreTheSumOfPerHeadFormulas) {
  for (int64_t d : {64, 128}) {
    const Activations a = RandomActivations(8, 4, 400, d, 51);
    for (const auto* tuples : {&kMixed, &kMixed2}) {
      for (int64_t c : {5, 33, 40, 97, 333}) {
        auto layer = CompressHeads(View(a), c, *tuples, Backend::kReference);
        ASSERT_TRUE(layer.ok()) << layer.status();
        EXPECT_FALSE(layer->format().Uniform());
        EXPECT_TRUE(ValidateFormat(layer->format()).ok());
        for (int64_t h = 0; h < 4; ++h) {
          EXPECT_EQ(layer->format().KBits(h), (*tuples)[h].kbits);
          EXPECT_EQ(layer->format().VBits(h), (*tuples)[h].vbits);
          EXPECT_EQ(layer->head(h).quantized, KeptTokens((*tuples)[h].keep, c)) << h;
        }
        EXPECT_EQ(layer->Bytes(), PerHeadBytes(*tuples, c, d)) << "c=" << c << " D " << d;
      }
    }
  }
}

TEST(CompressTest, MixedHeadIsTheUniformLayersHead) {
  const Activations a = RandomActivations(8, 4, 300, 64, 52, 1.5f);
  for (const auto* tuples : {&kMixed, &kMixed2}) {
    for (int64_t c : {40, 97, 300}) {
      auto mixed = CompressHeads(View(a), c, *tuples, Backend::kReference);
      ASSERT_TRUE(mixed.ok()) << mixed.status();
      for (int64_t h = 0; h < 4; ++h) {
        auto uniform = CompressLayer(View(a), c, (*tuples)[h], Backend::kReference);
        ASSERT_TRUE(uniform.ok());
        ExpectSameHead(mixed->head(h), uniform->head(h),
                       absl::StrCat("head ", h, " ", ToString((*tuples)[h]), " c=", c));
      }
      // Scores given by the caller (shared by several plans) give the same layer.
      auto scores = ComputeEvictionScores(View(a), c, Backend::kReference);
      ASSERT_TRUE(scores.ok());
      auto shared = CompressHeads(View(a), c, *tuples, Backend::kReference, &*scores);
      ASSERT_TRUE(shared.ok()) << shared.status();
      EXPECT_TRUE(shared->format() == mixed->format());
      for (int64_t h = 0; h < 4; ++h) ExpectSameHead(shared->head(h), mixed->head(h), "shared scores");
    }
  }
}

TEST(CompressTest, EqualHeadTuplesGiveTheUniformLayer) {
  const Activations a = RandomActivations(8, 4, 300, 128, 53);
  for (const CompressionTuple& t : {CompressionTuple{0.5, 4, 2}, CompressionTuple{1.0, 16, 16},
                                    CompressionTuple{0.125, 2, 8}}) {
    auto uniform = CompressLayer(View(a), 250, t, Backend::kReference);
    ASSERT_TRUE(uniform.ok());
    const std::vector<CompressionTuple> four(4, t);
    for (std::span<const CompressionTuple> tuples :
         {std::span<const CompressionTuple>(four), std::span<const CompressionTuple>(&t, 1)}) {
      auto heads = CompressHeads(View(a), 250, tuples, Backend::kReference);
      ASSERT_TRUE(heads.ok()) << heads.status();
      EXPECT_TRUE(heads->format().Uniform());
      EXPECT_TRUE(heads->format().head_kbits.empty() && heads->format().head_vbits.empty());
      EXPECT_EQ(heads->format().kbits, t.kbits);
      EXPECT_EQ(heads->format().vbits, t.vbits);
      EXPECT_EQ(heads->Bytes(), uniform->Bytes());
      for (int64_t h = 0; h < 4; ++h) ExpectSameHead(heads->head(h), uniform->head(h), ToString(t));
    }
  }
}

TEST(CompressTest, MixedLayerFlushesEachHeadWithItsBits) {
  const Activations a = RandomActivations(8, 4, 400, 64, 54);
  const int64_t c = 250, d = 64;
  auto mixed = CompressHeads(View(a), c, kMixed2, Backend::kReference);
  ASSERT_TRUE(mixed.ok());
  std::vector<CompressedLayer> uniform;
  for (const CompressionTuple& t : kMixed2) {
    auto l = CompressLayer(View(a), c, t, Backend::kReference);
    ASSERT_TRUE(l.ok());
    uniform.push_back(std::move(*l));
  }
  int64_t appended = 0;
  for (int64_t step : {1, 30, 33}) {  // 64 tokens: two flushes, the second after a split run
    const float* k = a.k.data() + (c + appended) * d;
    const float* v = a.v.data() + (c + appended) * d;
    ASSERT_TRUE(mixed->Append(k, v, step, a.n).ok());
    for (CompressedLayer& l : uniform) ASSERT_TRUE(l.Append(k, v, step, a.n).ok());
    appended += step;
  }
  ASSERT_EQ(appended, 64);
  int64_t expect = 0;
  for (int64_t h = 0; h < 4; ++h) {
    const CompressionTuple& t = kMixed2[h];
    const int64_t q = KeptTokens(t.keep, c) + 64;
    ASSERT_EQ(mixed->head(h).quantized, q);
    ExpectSameHead(mixed->head(h), uniform[h].head(h), absl::StrCat("head ", h, " after 64 appends"));
    expect += PackedKeyBytes(q, d, t.kbits) + PackedValueBytes(q, d, t.vbits) + 32 * d * 4;
  }
  EXPECT_EQ(mixed->residual_tokens(), 0);
  EXPECT_EQ(mixed->Bytes(), expect);
}

TEST(CompressTest, ReservationIsTheCapacityOfUniformAndMixedLayers) {
  const Activations a = RandomActivations(8, 4, 400, 64, 55);
  const int64_t c = 250, d = 64;
  for (const auto* tuples : {&kMixed, &kMixed2}) {
    std::vector<int64_t> kept;
    std::vector<int> kbits, vbits;
    for (const CompressionTuple& t : *tuples) {
      kept.push_back(KeptTokens(t.keep, c));
      kbits.push_back(t.kbits);
      vbits.push_back(t.vbits);
    }
    const LayerFormat f = LayerFormat::PerHead(d, kbits, vbits);
    for (int64_t appended : {0, 1, 31, 32, 33, 100}) {
      auto layer = CompressHeads(View(a), c, *tuples, Backend::kReference);
      ASSERT_TRUE(layer.ok());
      layer->Reserve(appended);
      const int64_t reserved = ReservedLayerBytes(f, kept, WindowTokens(c), appended);
      EXPECT_EQ(layer->CapacityBytes(), reserved) << appended;
      // The reservation is the sum of the heads' single-head reservations.
      int64_t sum = 0;
      for (int64_t h = 0; h < 4; ++h) {
        sum += ReservedLayerBytes({1, d, kbits[h], vbits[h]}, kept[h], WindowTokens(c), appended);
      }
      EXPECT_EQ(reserved, sum);
      const uint8_t* codes = layer->head(0).k_codes.data();
      ASSERT_TRUE(layer->Append(a.k.data() + c * d, a.v.data() + c * d, appended, a.n).ok());
      EXPECT_EQ(layer->CapacityBytes(), reserved) << appended;
      EXPECT_EQ(layer->head(0).k_codes.data(), codes) << appended;
    }
  }
  // A uniform layer: the one-count overload is the per-head one.
  auto layer = CompressLayer(View(a), c, {0.5, 4, 2}, Backend::kReference);
  ASSERT_TRUE(layer.ok());
  layer->Reserve(70);
  const std::vector<int64_t> kept(4, KeptTokens(0.5, c));
  EXPECT_EQ(layer->CapacityBytes(), ReservedLayerBytes({4, d, 4, 2}, KeptTokens(0.5, c), 32, 70));
  EXPECT_EQ(layer->CapacityBytes(), ReservedLayerBytes({4, d, 4, 2}, kept, 32, 70));
}

TEST(CompressTest, LayerFormatPerHeadBits) {
  const LayerFormat uniform{4, 64, 4, 2};
  EXPECT_TRUE(uniform.Uniform());
  EXPECT_EQ(uniform.KBits(3), 4);
  EXPECT_EQ(uniform.VBits(3), 2);
  EXPECT_EQ(BitsString(uniform), "4/2");
  // Spelled per head with equal bits: the same format.
  const LayerFormat same = LayerFormat::PerHead(64, {4, 4, 4, 4}, {2, 2, 2, 2});
  EXPECT_TRUE(same.head_kbits.empty() && same.head_vbits.empty());
  EXPECT_TRUE(same == uniform);
  LayerFormat spelled = uniform;
  spelled.head_kbits = {4, 4, 4, 4};
  EXPECT_TRUE(spelled == uniform);
  EXPECT_TRUE(spelled.Uniform());

  const LayerFormat mixed = LayerFormat::PerHead(64, {4, 8, 4, 16}, {2, 2, 16, 2});
  EXPECT_FALSE(mixed.Uniform());
  EXPECT_FALSE(mixed == uniform);
  EXPECT_EQ(mixed.KBits(1), 8);
  EXPECT_EQ(mixed.VBits(2), 16);
  EXPECT_EQ(BitsString(mixed), "[4/2 8/2 4/16 16/2]");
  EXPECT_TRUE(ValidateFormat(mixed).ok());

  LayerFormat short_bits = mixed;
  short_bits.head_kbits.pop_back();
  const absl::Status st = ValidateFormat(short_bits);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("3 entries for 4 KV heads"), std::string::npos) << st;
  LayerFormat bad_bits = mixed;
  bad_bits.head_vbits[2] = 3;
  const absl::Status st2 = ValidateFormat(bad_bits);
  EXPECT_EQ(st2.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st2.message().find("V bits 3 of KV head 2"), std::string::npos) << st2;
}

}  // namespace
}  // namespace moend::kernels

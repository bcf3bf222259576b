#include "runtime/sequence.h"

#include <gtest/gtest.h>

#include <random>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/kv_compress.h"
#include "runtime/streaming_prefill.h"
#include "tests/runtime/tinycode_fixture.h"
#include "tests/kernels/same_head.h"

namespace moend::runtime {
namespace {

using SequenceTest = testing::TinycodeTest;

// The whole-prompt forward (Model::Forward), compressed layer by layer
// afterwards: an implementation independent of the streaming prefill.
// `tuples` is a per-layer or a per-head plan.
std::vector<kernels::CompressedLayer> CompressAfterForward(
    const Model& model, std::span<const int32_t> context,
    const std::vector<CompressionTuple>& tuples) {
  const ModelConfig& c = model.config();
  std::vector<kernels::CompressedLayer> layers;
  const int64_t n = static_cast<int64_t>(context.size());
  auto logits = model.Forward(context, [&](const LayerActivations& a) {
    kernels::LayerTensors x{a.q, a.k, a.v, c.num_heads, c.num_kv_heads, n, c.head_dim};
    // One tuple per head (HeadTuple reads per-layer and per-head plans alike).
    std::vector<CompressionTuple> heads;
    for (int64_t h = 0; h < c.num_kv_heads; ++h) heads.push_back(HeadTuple(c, tuples, a.layer, h));
    auto layer = kernels::CompressHeads(x, n, heads, kernels::Backend::kReference);
    EXPECT_TRUE(layer.ok()) << layer.status();
    layers.push_back(*layer);
  });
  EXPECT_TRUE(logits.ok());
  return layers;
}

// Decodes one token at a time with kernels::DecodeAttention over the packed
// cache (reference backend): an implementation independent of the streaming
// prefill, runtime::Step's runs and the CPU kernel.
std::vector<float> SlowDecode(const Model& model, std::span<const int32_t> context,
                              const std::vector<CompressionTuple>& tuples,
                              std::span<const int32_t> tokens) {
  const ModelConfig& c = model.config();
  std::vector<kernels::CompressedLayer> layers = CompressAfterForward(model, context, tuples);
  const int64_t prefix = static_cast<int64_t>(context.size());
  std::vector<float> logits;
  const int64_t d = c.head_dim;
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::vector<float> x(c.hidden_size), q(c.num_heads * d), k(c.num_kv_heads * d),
        v(c.num_kv_heads * d), attn(c.num_heads * d), out(c.vocab_size);
    model.Embed(tokens.subspan(i, 1), x.data());
    for (int64_t l = 0; l < c.num_layers; ++l) {
      model.AttentionInputs(l, x.data(), 1, prefix + static_cast<int64_t>(i), q.data(),
                            k.data(), v.data());
      EXPECT_TRUE(layers[l].Append(k.data(), v.data(), 1).ok());
      const kernels::CompressedLayer* batch[] = {&layers[l]};
      EXPECT_TRUE(kernels::DecodeAttention(batch, q.data(), c.num_heads, attn.data(),
                                           kernels::Backend::kReference)
                      .ok());
      model.FinishLayer(l, attn.data(), 1, x.data());
    }
    model.Logits(x.data(), 1, out.data());
    logits.insert(logits.end(), out.begin(), out.end());
  }
  return logits;
}

Sequence Prefilled(const Model& model, std::span<const int32_t> context,
                   const std::vector<CompressionTuple>& tuples, int64_t appended,
                   std::vector<float>* last_logits = nullptr) {
  std::vector<std::vector<CompressionTuple>> plans{tuples};
  PrefillOptions options;
  options.appended_capacity = appended;
  options.chunk_tokens = 96;  // rounded to 128: several chunks, the last one partial
  auto prefill = StreamingPrefill(model, context, plans, options);
  EXPECT_TRUE(prefill.ok()) << prefill.status();
  if (last_logits) *last_logits = prefill->last_logits;
  return Sequence(std::move(prefill->caches[0]), static_cast<int64_t>(context.size()));
}

std::vector<CompressionTuple> MixedPlan() {
  std::vector<CompressionTuple> tuples;
  for (int l = 0; l < 12; ++l) {
    const CompressionTuple options[] = {{0.5, 4, 2}, {0.25, 2, 8}, {1.0, 8, 4}, {0.125, 16, 2}};
    tuples.push_back(options[l % 4]);
  }
  return tuples;
}

TEST_F(SequenceTest, MatchesTokenByTokenDecodingOverThePackedCache) {
  std::span<const int32_t> context(text_->data(), 600);
  std::span<const int32_t> rest(text_->data() + 600, 70);  // crosses two flushes
  const std::vector<CompressionTuple> tuples = MixedPlan();
  Sequence seq = Prefilled(*model_, context, tuples, 70);
  // The streaming prefill compresses exactly what compressing after a whole
  // forward gives (same kept tokens, same codes up to float rounding of the
  // chunked projections): same sizes.
  std::vector<kernels::CompressedLayer> after = CompressAfterForward(*model_, context, tuples);
  for (int l = 0; l < 12; ++l) EXPECT_EQ(seq.layers()[l].Bytes(), after[l].Bytes()) << l;
  // Feed in uneven pieces to exercise the runs.
  std::vector<float> fast;
  for (auto [begin, size] : {std::pair{0, 5}, {5, 40}, {45, 25}}) {
    auto part = Feed(*model_, seq, rest.subspan(begin, size));
    ASSERT_TRUE(part.ok()) << part.status();
    fast.insert(fast.end(), part->begin(), part->end());
  }
  std::vector<float> slow = SlowDecode(*model_, context, tuples, rest);
  ASSERT_EQ(fast.size(), slow.size());
  // The two paths compute the new tokens' K/V with different matrix shapes
  // (runs vs single tokens, chunked vs whole prefill), so a value on a
  // rounding boundary can land on the neighbouring quantization code; that
  // moves a logit by up to ~1e-2.
  double max_diff = 0, sum_diff = 0;
  for (size_t i = 0; i < fast.size(); ++i) {
    max_diff = std::max<double>(max_diff, std::fabs(fast[i] - slow[i]));
    sum_diff += std::fabs(fast[i] - slow[i]);
  }
  EXPECT_LT(max_diff, 0.05);
  EXPECT_LT(sum_diff / static_cast<double>(fast.size()), 1e-3);
  EXPECT_EQ(seq.position(), 670);
}

TEST_F(SequenceTest, FullPlanMatchesTheFullForwardAndBytesAreExact) {
  std::span<const int32_t> all(text_->data(), 680);
  auto reference = model_->Forward(all);
  ASSERT_TRUE(reference.ok());
  std::vector<CompressionTuple> full(12, CompressionTuple{1.0, 16, 16});
  std::vector<float> last;
  Sequence seq = Prefilled(*model_, all.subspan(0, 600), full, 80, &last);
  for (int i = 0; i < 256; ++i) EXPECT_NEAR(last[i], (*reference)[599 * 256 + i], 1e-3);
  EXPECT_EQ(seq.CacheBytes(), seq.UncompressedBytes(model_->config()));
  const int64_t capacity = seq.CapacityBytes();
  EXPECT_EQ(capacity, ReservedSequenceBytes(model_->config(), full, 600, 80));
  auto logits = Feed(*model_, seq, all.subspan(600, 80));
  ASSERT_TRUE(logits.ok());
  double max_diff = 0;
  for (size_t i = 0; i < logits->size(); ++i) {
    max_diff = std::max<double>(max_diff, std::fabs((*logits)[i] - (*reference)[600 * 256 + i]));
  }
  EXPECT_LT(max_diff, 0.05);  // only the fp16 rounding of the cache differs
  // After 80 appended tokens (2 flushed groups + 16 in the residual) the cache
  // still costs exactly what an fp16 cache would, and it grew in place.
  EXPECT_EQ(seq.CacheBytes(), seq.UncompressedBytes(model_->config()));
  EXPECT_EQ(seq.CapacityBytes(), capacity);

  std::vector<CompressionTuple> small(12, CompressionTuple{0.25, 2, 2});
  Sequence compressed = Prefilled(*model_, all.subspan(0, 600), small, 0);
  EXPECT_EQ(compressed.CacheBytes(), 12 * LayerBytes({2, 64}, small[0], 600));
}

TEST_F(SequenceTest, ReservationCoversEveryAppendWithoutMovingTheCache) {
  std::span<const int32_t> context(text_->data(), 300);
  const std::vector<CompressionTuple> tuples = MixedPlan();
  for (int64_t appended : {0, 1, 31, 32, 33, 64, 100}) {
    Sequence seq = Prefilled(*model_, context, tuples, appended);
    const int64_t reserved = ReservedSequenceBytes(model_->config(), tuples, 300, appended);
    EXPECT_EQ(seq.CapacityBytes(), reserved) << appended;
    const uint8_t* codes = seq.layers()[0].head(0).k_codes.data();
    ASSERT_TRUE(Feed(*model_, seq, std::span<const int32_t>(text_->data() + 300, appended)).ok());
    EXPECT_EQ(seq.CapacityBytes(), reserved) << appended;
    EXPECT_EQ(seq.layers()[0].head(0).k_codes.data(), codes) << appended;
  }
}

TEST_F(SequenceTest, BatchedStepEqualsEachSequenceAlone) {
  // Three sequences of different lengths and plans, decoded in one batch,
  // give the logits each gets alone.
  const std::vector<std::vector<CompressionTuple>> plans = {
      MixedPlan(), std::vector<CompressionTuple>(12, CompressionTuple{}),
      std::vector<CompressionTuple>(12, CompressionTuple{0.25, 2, 2})};
  const int64_t lengths[] = {200, 333, 250};
  std::vector<Sequence> together, alone;
  for (int i = 0; i < 3; ++i) {
    std::span<const int32_t> ctx(text_->data(), lengths[i]);
    together.push_back(Prefilled(*model_, ctx, plans[i], 40));
    alone.push_back(Prefilled(*model_, ctx, plans[i], 40));
  }
  for (int step = 0; step < 40; ++step) {
    std::vector<int32_t> tokens(3);
    std::vector<StepInput> batch;
    for (int i = 0; i < 3; ++i) {
      tokens[i] = (*text_)[lengths[i] + step];
      batch.push_back({&together[i], std::span<const int32_t>(&tokens[i], 1)});
    }
    std::vector<float> logits;
    ASSERT_TRUE(Step(*model_, batch, &logits).ok());
    for (int i = 0; i < 3; ++i) {
      auto one = Feed(*model_, alone[i], std::span<const int32_t>(&tokens[i], 1));
      ASSERT_TRUE(one.ok());
      for (int v = 0; v < 256; ++v) {
        ASSERT_NEAR(logits[i * 256 + v], (*one)[v], 1e-3) << "step " << step << " seq " << i;
      }
    }
  }
}

TEST_F(SequenceTest, RejectsBadPlansAndTokens) {
  std::span<const int32_t> context(text_->data(), 100);
  std::vector<std::vector<CompressionTuple>> eleven{std::vector<CompressionTuple>(11)};
  EXPECT_EQ(StreamingPrefill(*model_, context, eleven).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<std::vector<CompressionTuple>> bad{
      std::vector<CompressionTuple>(12, CompressionTuple{0.5, 3, 16})};
  auto refused = StreamingPrefill(*model_, context, bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("layer 0"), std::string::npos) << refused.status();
  Sequence seq = Prefilled(*model_, context, std::vector<CompressionTuple>(12), 4);
  EXPECT_EQ(Feed(*model_, seq, std::vector<int32_t>{300}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(seq.position(), 100);  // nothing was fed
  std::vector<int32_t> too_many(40, 65);
  StepInput in{&seq, too_many};
  std::vector<float> logits;
  EXPECT_EQ(Step(*model_, std::span<const StepInput>(&in, 1), &logits).code(),
            absl::StatusCode::kInvalidArgument);
  // One sequence twice in a batch: refused, and nothing is fed.
  const int32_t a = 65, b = 66;
  const StepInput twice[] = {{&seq, std::span<const int32_t>(&a, 1)},
                             {&seq, std::span<const int32_t>(&b, 1)}};
  const absl::Status dup = Step(*model_, twice, &logits);
  EXPECT_EQ(dup.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(dup.message().find("same sequence"), std::string::npos) << dup;
  EXPECT_EQ(seq.position(), 100);
}

TEST(CausalAttentionTest, RowRangesFromMultiplesOf64GiveTheWholeCallsRowsExactly) {
  const int64_t h = 4, hkv = 2, n = 333, d = 64;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<float> q(h * n * d), k(hkv * n * d), v(hkv * n * d);
  for (auto* x : {&q, &k, &v}) {
    for (float& f : *x) f = normal(rng);
  }
  std::vector<float> whole(n * h * d), pieces(n * h * d, -1.0f);
  Model::CausalAttention(q.data(), k.data(), v.data(), h, hkv, n, d, whole.data());
  for (int64_t r0 : {0, 128, 256}) {
    Model::CausalAttention(q.data(), k.data(), v.data(), h, hkv, n, d, pieces.data(), r0,
                           std::min<int64_t>(r0 + 128, n));
  }
  EXPECT_EQ(pieces, whole);
  // A range writes its rows only.
  std::vector<float> one(n * h * d, -1.0f);
  Model::CausalAttention(q.data(), k.data(), v.data(), h, hkv, n, d, one.data(), 64, 128);
  for (int64_t t = 0; t < n; ++t) {
    const bool inside = t >= 64 && t < 128;
    for (int64_t e = 0; e < h * d; ++e) {
      ASSERT_EQ(one[t * h * d + e], inside ? whole[t * h * d + e] : -1.0f) << t << " " << e;
    }
  }
}

TEST_F(SequenceTest, PrefillRunInPiecesGivesTheStreamingPrefillsCaches) {
  std::span<const int32_t> context(text_->data() + 300, 333);
  const std::vector<std::vector<CompressionTuple>> plans{
      std::vector<CompressionTuple>(12, CompressionTuple{0.25, 4, 2}),
      std::vector<CompressionTuple>(12)};
  PrefillOptions options;
  options.appended_capacity = 7;
  options.chunk_tokens = 100;  // rounded to 128: chunks of 128, 128, 77
  auto whole = StreamingPrefill(*model_, context, plans, options);
  ASSERT_TRUE(whole.ok()) << whole.status();
  // Layer by layer, one unit at a time, and pieces that end mid-phase and
  // span layers: the same caches and logits, bit for bit.
  for (int64_t budget : {int64_t{0}, int64_t{1}, int64_t{300}, int64_t{2000}}) {
    SCOPED_TRACE(budget == 0 ? std::string("NextLayer") : absl::StrCat("budget ", budget));
    auto run = PrefillRun::Start(*model_, context, plans, options);
    ASSERT_TRUE(run.ok()) << run.status();
    int64_t calls = 0;
    while (!(*run)->done()) {
      if (budget == 0) EXPECT_EQ((*run)->layers_done(), calls);
      ASSERT_TRUE((budget == 0 ? (*run)->NextLayer() : (*run)->Advance(budget)).ok());
      ++calls;
    }
    // Per layer: 3 x 3 chunk units and the compression.
    if (budget == 0) EXPECT_EQ(calls, 12);
    if (budget == 1) EXPECT_EQ(calls, 12 * 10);
    EXPECT_EQ((*run)->Advance(1).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ((*run)->NextLayer().code(), absl::StatusCode::kFailedPrecondition);
    PrefillResult stepped = (*run)->TakeResult();
    EXPECT_EQ(stepped.last_logits, whole->last_logits);
    ASSERT_EQ(stepped.caches.size(), 2u);
    for (size_t p = 0; p < 2; ++p) {
      ASSERT_EQ(stepped.caches[p].size(), 12u);
      for (size_t l = 0; l < 12; ++l) {
        const kernels::CompressedLayer& x = stepped.caches[p][l];
        const kernels::CompressedLayer& y = whole->caches[p][l];
        EXPECT_EQ(x.Bytes(), y.Bytes()) << p << " " << l;
        EXPECT_EQ(x.CapacityBytes(), y.CapacityBytes()) << p << " " << l;
        for (int64_t h = 0; h < 2; ++h) {
          moend::testing::ExpectSameHead(x.head(h), y.head(h),
                                         absl::StrCat("plan ", p, " layer ", l));
        }
      }
    }
  }
  // Bad input is refused before any layer runs.
  const std::vector<std::vector<CompressionTuple>> eleven{std::vector<CompressionTuple>(11)};
  EXPECT_EQ(PrefillRun::Start(*model_, context, eleven).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Per-head plans (DESIGN.md section 2.9a): tinycode has 12 layers x 2 KV heads.

// The per-head plan that gives KV head h of layer l the tuple heads[h][l].
std::vector<CompressionTuple> PerHead(const std::vector<CompressionTuple>& head0,
                                      const std::vector<CompressionTuple>& head1) {
  std::vector<CompressionTuple> plan;
  for (size_t l = 0; l < head0.size(); ++l) {
    plan.push_back(head0[l]);
    plan.push_back(head1[l]);
  }
  return plan;
}

std::vector<CompressionTuple> OtherPlan() {
  std::vector<CompressionTuple> tuples;
  for (int l = 0; l < 12; ++l) {
    const CompressionTuple options[] = {{0.25, 16, 16}, {1.0, 2, 2}, {0.5, 8, 4}};
    tuples.push_back(options[l % 3]);
  }
  return tuples;
}

using moend::testing::ExpectSameHead;

TEST_F(SequenceTest, PerHeadPlansGiveEachHeadItsTuplesCache) {
  std::span<const int32_t> context(text_->data(), 300);
  const std::vector<CompressionTuple> a = MixedPlan(), b = OtherPlan();
  // One prefill, four plans: two per layer, the per-head spelling of the
  // first, and the per-head plan whose head 0 follows `a` and head 1 `b`.
  const std::vector<std::vector<CompressionTuple>> plans = {a, b, PerHead(a, a), PerHead(a, b)};
  PrefillOptions options;
  options.appended_capacity = 40;
  options.chunk_tokens = 96;
  auto prefill = StreamingPrefill(*model_, context, plans, options);
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  const auto& caches = prefill->caches;
  for (int l = 0; l < 12; ++l) {
    const std::string at = "layer " + std::to_string(l);
    // Equal heads: the per-layer plan's cache, byte for byte.
    EXPECT_TRUE(caches[2][l].format() == caches[0][l].format()) << at;
    EXPECT_TRUE(caches[2][l].format().Uniform()) << at;
    EXPECT_EQ(caches[2][l].Bytes(), caches[0][l].Bytes()) << at;
    EXPECT_EQ(caches[2][l].CapacityBytes(), caches[0][l].CapacityBytes()) << at;
    for (int h = 0; h < 2; ++h) ExpectSameHead(caches[2][l].head(h), caches[0][l].head(h), at);
    // Mixed heads: each head is that head of its tuple's per-layer cache.
    const kernels::LayerFormat& f = caches[3][l].format();
    EXPECT_EQ(f.KBits(0), a[l].kbits) << at;
    EXPECT_EQ(f.VBits(1), b[l].vbits) << at;
    ExpectSameHead(caches[3][l].head(0), caches[0][l].head(0), at + " head 0");
    ExpectSameHead(caches[3][l].head(1), caches[1][l].head(1), at + " head 1");
  }
  // The reservation of each plan is what its caches allocated.
  for (size_t p = 0; p < plans.size(); ++p) {
    int64_t capacity = 0;
    for (const auto& layer : caches[p]) capacity += layer.CapacityBytes();
    EXPECT_EQ(capacity, ReservedSequenceBytes(model_->config(), plans[p], 300, 40)) << p;
  }
}

TEST_F(SequenceTest, PerHeadPlanDecodesLikeTokenByTokenAndReservesExactly) {
  std::span<const int32_t> context(text_->data(), 400);
  std::span<const int32_t> rest(text_->data() + 400, 40);  // crosses one flush
  const std::vector<CompressionTuple> plan = PerHead(MixedPlan(), OtherPlan());
  Sequence seq = Prefilled(*model_, context, plan, 40);
  const int64_t reserved = ReservedSequenceBytes(model_->config(), plan, 400, 40);
  EXPECT_EQ(seq.CapacityBytes(), reserved);
  std::vector<kernels::CompressedLayer> after = CompressAfterForward(*model_, context, plan);
  for (int l = 0; l < 12; ++l) EXPECT_EQ(seq.layers()[l].Bytes(), after[l].Bytes()) << l;
  std::vector<float> fast;
  for (auto [begin, size] : {std::pair{0, 7}, {7, 33}}) {
    auto part = Feed(*model_, seq, rest.subspan(begin, size));
    ASSERT_TRUE(part.ok()) << part.status();
    fast.insert(fast.end(), part->begin(), part->end());
  }
  EXPECT_EQ(seq.CapacityBytes(), reserved);  // grew in place
  std::vector<float> slow = SlowDecode(*model_, context, plan, rest);
  ASSERT_EQ(fast.size(), slow.size());
  // As in MatchesTokenByTokenDecodingOverThePackedCache.
  double max_diff = 0, sum_diff = 0;
  for (size_t i = 0; i < fast.size(); ++i) {
    max_diff = std::max<double>(max_diff, std::fabs(fast[i] - slow[i]));
    sum_diff += std::fabs(fast[i] - slow[i]);
  }
  EXPECT_LT(max_diff, 0.05);
  EXPECT_LT(sum_diff / static_cast<double>(fast.size()), 1e-3);
}

TEST_F(SequenceTest, PlansOfOtherSizesAreRejected) {
  const ModelConfig& c = model_->config();
  ASSERT_EQ(c.num_layers, 12);
  ASSERT_EQ(c.num_kv_heads, 2);
  EXPECT_TRUE(ValidatePlan(c, std::vector<CompressionTuple>(12)).ok());
  EXPECT_TRUE(ValidatePlan(c, std::vector<CompressionTuple>(24)).ok());
  for (size_t size : {0, 11, 13, 23, 25, 36}) {
    const absl::Status st = ValidatePlan(c, std::vector<CompressionTuple>(size));
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << size;
    EXPECT_NE(st.message().find("allows 12 (one per layer) or 24"), std::string::npos) << st;
  }
  std::vector<CompressionTuple> bad(24);
  bad[5] = {0.5, 4, 3};  // layer 2, KV head 1
  const absl::Status st = ValidatePlan(c, bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("layer 2 KV head 1: V bits 3"), std::string::npos) << st;
  std::span<const int32_t> context(text_->data(), 100);
  std::vector<std::vector<CompressionTuple>> plans{std::vector<CompressionTuple>(12),
                                                   std::vector<CompressionTuple>(23)};
  auto refused = StreamingPrefill(*model_, context, plans);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("plan 1"), std::string::npos) << refused.status();
  // HeadTuple reads both kinds.
  const std::vector<CompressionTuple> per_head = PerHead(MixedPlan(), OtherPlan());
  EXPECT_EQ(HeadTuple(c, per_head, 7, 1), OtherPlan()[7]);
  EXPECT_EQ(HeadTuple(c, per_head, 7, 0), MixedPlan()[7]);
  EXPECT_EQ(HeadTuple(c, MixedPlan(), 7, 1), MixedPlan()[7]);
}

}  // namespace
}  // namespace moend::runtime

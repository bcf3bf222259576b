#include "clients/inference/compressed_sequence.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/file_util.h"
#include "kernels/attention.h"
#include "kernels/kv_compress.h"

namespace moend::inference {
namespace {

class CompressedSequenceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto m = Model::Load(std::string(MOEND_SOURCE_DIR) + "/models/tinycode");
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = m->release();
    auto bytes = ReadFile(std::string(MOEND_SOURCE_DIR) + "/data/heldout_code.bin");
    ASSERT_TRUE(bytes.ok());
    for (int i = 0; i < 700; ++i) text_->push_back(static_cast<unsigned char>((*bytes)[i]));
  }
  static void TearDownTestSuite() { delete model_; }
  static Model* model_;
  static std::vector<int32_t>* text_;
};
Model* CompressedSequenceTest::model_ = nullptr;
std::vector<int32_t>* CompressedSequenceTest::text_ = new std::vector<int32_t>();

// Decodes one token at a time with kernels::DecodeAttention over the packed
// cache (reference backend): an implementation independent of the dense,
// chunked path of CompressedSequence.
std::vector<float> SlowDecode(const Model& model, const PrefillCapture& prefill,
                              const std::vector<CompressionTuple>& tuples,
                              std::span<const int32_t> tokens) {
  const ModelConfig& c = model.config();
  std::vector<kernels::CompressedLayer> layers;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    kernels::LayerTensors x{prefill.q[l].data(), prefill.k[l].data(), prefill.v[l].data(),
                            c.num_heads, c.num_kv_heads, prefill.tokens, c.head_dim};
    auto layer = kernels::CompressLayer(x, prefill.tokens, tuples[l], kernels::Backend::kReference);
    EXPECT_TRUE(layer.ok()) << layer.status();
    layers.push_back(*layer);
  }
  std::vector<float> logits;
  const int64_t d = c.head_dim;
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::vector<float> x(c.hidden_size), q(c.num_heads * d), k(c.num_kv_heads * d),
        v(c.num_kv_heads * d), attn(c.num_heads * d), out(c.vocab_size);
    model.Embed(tokens.subspan(i, 1), x.data());
    for (int64_t l = 0; l < c.num_layers; ++l) {
      model.AttentionInputs(l, x.data(), 1, prefill.tokens + static_cast<int64_t>(i), q.data(),
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

TEST_F(CompressedSequenceTest, MatchesTokenByTokenDecodingOverThePackedCache) {
  std::span<const int32_t> context(text_->data(), 600);
  std::span<const int32_t> rest(text_->data() + 600, 70);  // crosses two flushes
  auto prefill = Prefill(*model_, context);
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  std::vector<CompressionTuple> tuples;
  for (int l = 0; l < 12; ++l) {
    const CompressionTuple options[] = {{0.5, 4, 2}, {0.25, 2, 8}, {1.0, 8, 4}, {0.125, 16, 2}};
    tuples.push_back(options[l % 4]);
  }
  auto seq = CompressedSequence::Create(*model_, *prefill, tuples, kernels::Backend::kReference);
  ASSERT_TRUE(seq.ok()) << seq.status();
  // Feed in uneven pieces to exercise chunking.
  std::vector<float> fast;
  for (auto [begin, size] : {std::pair{0, 5}, {5, 40}, {45, 25}}) {
    auto part = (*seq)->Feed(rest.subspan(begin, size));
    ASSERT_TRUE(part.ok()) << part.status();
    fast.insert(fast.end(), part->begin(), part->end());
  }
  std::vector<float> slow = SlowDecode(*model_, *prefill, tuples, rest);
  ASSERT_EQ(fast.size(), slow.size());
  // The two paths compute the new tokens' K/V with different matrix shapes
  // (chunk vs single token), so a value on a rounding boundary can land on the
  // neighbouring quantization code; that moves a logit by up to ~1e-2.
  double max_diff = 0, sum_diff = 0;
  for (size_t i = 0; i < fast.size(); ++i) {
    max_diff = std::max<double>(max_diff, std::fabs(fast[i] - slow[i]));
    sum_diff += std::fabs(fast[i] - slow[i]);
  }
  EXPECT_LT(max_diff, 0.05);
  EXPECT_LT(sum_diff / static_cast<double>(fast.size()), 1e-3);
  EXPECT_EQ((*seq)->position(), 670);
}

TEST_F(CompressedSequenceTest, FullPlanMatchesTheFullForwardAndBytesAreExact) {
  std::span<const int32_t> all(text_->data(), 680);
  auto reference = model_->Forward(all);
  ASSERT_TRUE(reference.ok());
  auto prefill = Prefill(*model_, all.subspan(0, 600));
  ASSERT_TRUE(prefill.ok());
  std::vector<CompressionTuple> full(12, CompressionTuple{1.0, 16, 16});
  auto seq = CompressedSequence::Create(*model_, *prefill, full);
  ASSERT_TRUE(seq.ok()) << seq.status();
  EXPECT_EQ((*seq)->CacheBytes(), (*seq)->UncompressedBytes());
  auto logits = (*seq)->Feed(all.subspan(600, 80));
  ASSERT_TRUE(logits.ok());
  double max_diff = 0;
  for (size_t i = 0; i < logits->size(); ++i) {
    max_diff = std::max<double>(max_diff, std::fabs((*logits)[i] - (*reference)[600 * 256 + i]));
  }
  EXPECT_LT(max_diff, 0.05);  // only the fp16 rounding of the cache differs
  // After 80 appended tokens (2 flushed groups + 16 in the residual) the cache
  // still costs exactly what an fp16 cache would.
  EXPECT_EQ((*seq)->CacheBytes(), (*seq)->UncompressedBytes());

  std::vector<CompressionTuple> small(12, CompressionTuple{0.25, 2, 2});
  auto compressed = CompressedSequence::Create(*model_, *prefill, small);
  ASSERT_TRUE(compressed.ok());
  EXPECT_EQ((*compressed)->CacheBytes(), 12 * LayerBytes({2, 64}, small[0], 600));
}

TEST_F(CompressedSequenceTest, RejectsBadPlansAndTokens) {
  auto prefill = Prefill(*model_, std::span<const int32_t>(text_->data(), 100));
  ASSERT_TRUE(prefill.ok());
  std::vector<CompressionTuple> eleven(11, CompressionTuple{});
  EXPECT_EQ(CompressedSequence::Create(*model_, *prefill, eleven).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<CompressionTuple> bad(12, CompressionTuple{0.5, 3, 16});
  EXPECT_FALSE(CompressedSequence::Create(*model_, *prefill, bad).ok());
  std::vector<CompressionTuple> full(12, CompressionTuple{});
  auto seq = CompressedSequence::Create(*model_, *prefill, full);
  ASSERT_TRUE(seq.ok());
  EXPECT_EQ((*seq)->Feed(std::vector<int32_t>{300}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moend::inference

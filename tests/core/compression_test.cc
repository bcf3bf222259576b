#include "core/compression.h"

#include <gtest/gtest.h>

namespace moend {
namespace {

TEST(CompressionTest, DefaultGridHas112Tuples) {
  TupleGrid grid = TupleGrid::Default();
  ASSERT_TRUE(grid.Validate().ok());
  std::vector<CompressionTuple> tuples = grid.Tuples();
  EXPECT_EQ(tuples.size(), 112u);
  EXPECT_EQ(tuples.front(), (CompressionTuple{1.0, 16, 16}));
  EXPECT_EQ(tuples.back(), (CompressionTuple{0.0625, 2, 2}));
}

TEST(CompressionTest, RejectsBadTuples) {
  EXPECT_EQ(ValidateTuple({0.0, 16, 16}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateTuple({1.5, 16, 16}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateTuple({0.5, 3, 16}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateTuple({0.5, 16, 1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateTuple({0.5, 2, 8}).ok());
  TupleGrid bad{{1.0}, {16, 3}, {16}};
  EXPECT_FALSE(bad.Validate().ok());
}

TEST(CompressionTest, FullTupleCostsFullCache) {
  // keep 1 at 16 bits stores every token at fp16: exactly the full cache.
  KvShape shape{2, 64};
  for (int64_t c : {32, 33, 100, 4096}) {
    EXPECT_EQ(LayerBytes(shape, {1.0, 16, 16}, c), FullLayerBytes(shape, c)) << c;
  }
}

TEST(CompressionTest, LayerBytesMatchesDesignFormulaByHand) {
  // D=64, c=3840: candidates 3808, keep .25 -> m=952; K 2 bits, V 4 bits.
  KvShape shape{2, 64};
  const int64_t m = 952;
  const int64_t k = m * 64 * 2 / 8 + ((m + 31) / 32) * 64 * 4;
  const int64_t v = m * 64 * 4 / 8 + m * 2 * 4;
  const int64_t window = 32 * 64 * 2 * 2;
  EXPECT_EQ(KeptTokens(0.25, 3840), m);
  EXPECT_EQ(LayerBytes(shape, {0.25, 2, 4}, 3840), 2 * (k + v + window));
}

TEST(CompressionTest, DesignDocWorkedExampleOfTheShippedModel) {
  // docs/DESIGN.md section 2.11, computed by hand there: 12 layers, 2 KV
  // heads, D 64, c = 3840.
  const KvShape shape{2, 64};
  const int64_t c = 3840;
  EXPECT_EQ(FullLayerBytes(shape, c), 1966080);
  EXPECT_EQ(LayerBytes(shape, {0.25, 4, 4}, c), 2 * (38144 + 38080 + 8192));
  EXPECT_EQ(LayerBytes(shape, {1.0, 2, 4}, c), 2 * (91392 + 152320 + 8192));
  EXPECT_EQ(LayerBytes(shape, {0.0625, 2, 2}, c), 39520);           // the cheapest tuple
  EXPECT_EQ(12 * LayerBytes(shape, {0.0625, 16, 16}, c), 1658880);  // 1d's floor
  EXPECT_EQ(12 * LayerBytes(shape, {1.0, 2, 2}, c), 4583424);       // 2d's floor
}

TEST(CompressionTest, ShortPrefixesKeepOnlyTheWindow) {
  EXPECT_EQ(CandidateTokens(10), 0);
  EXPECT_EQ(WindowTokens(10), 10);
  EXPECT_EQ(KeptTokens(0.5, 10), 0);
  EXPECT_EQ(KeptTokens(0.5, 33), 1);  // round(0.5) away from zero
}

}  // namespace
}  // namespace moend

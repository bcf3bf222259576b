// Sanity of the committed calibration of the shipped model
// (data/tables/tinycode_calibration_4096x16.json, made by `moendctl calibrate`
// over data/calibration.bin): the reference tuple costs nothing, error never
// rises along a single axis as bits or keep rise, and layers differ.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/sensitivity_table.h"

namespace moend {
namespace {

class CommittedTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = ReadSensitivityTable(std::string(MOEND_SOURCE_DIR) +
                                  "/data/tables/tinycode_calibration_4096x16.json");
    ASSERT_TRUE(t.ok()) << t.status();
    table_ = *t;
  }
  double S(size_t layer, const CompressionTuple& t) const {
    for (size_t i = 0; i < table_.tuples.size(); ++i)
      if (table_.tuples[i] == t) return table_.s[layer][i];
    ADD_FAILURE() << "missing tuple " << ToString(t);
    return 0;
  }
  SensitivityTable table_;
};

TEST_F(CommittedTableTest, ShapeMatchesTheShippedModelAndTheDefaultGrid) {
  EXPECT_EQ(table_.model, "tinycode");
  EXPECT_EQ(table_.num_layers, 12);
  EXPECT_EQ(table_.num_kv_heads, 2);
  EXPECT_EQ(table_.head_dim, 64);
  EXPECT_EQ(table_.seq_len, 4096);
  EXPECT_EQ(table_.compression_point, 3840);
  EXPECT_EQ(table_.samples, 16);
  EXPECT_EQ(table_.tuples, TupleGrid::Default().Tuples());
}

TEST_F(CommittedTableTest, ReferenceTupleIsExactlyZero) {
  for (size_t l = 0; l < 12; ++l) EXPECT_EQ(S(l, {1.0, 16, 16}), 0.0) << l;
}

TEST_F(CommittedTableTest, ErrorDoesNotRiseAlongAnySingleAxis) {
  const std::vector<double> keeps = {0.0625, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0};
  const std::vector<int> bits = {2, 4, 8, 16};
  for (size_t l = 0; l < 12; ++l) {
    for (size_t i = 0; i + 1 < keeps.size(); ++i) {
      EXPECT_GE(S(l, {keeps[i], 16, 16}), S(l, {keeps[i + 1], 16, 16})) << "layer " << l;
    }
    for (size_t i = 0; i + 1 < bits.size(); ++i) {
      EXPECT_GE(S(l, {1.0, bits[i], 16}), S(l, {1.0, bits[i + 1], 16})) << "layer " << l;
      EXPECT_GE(S(l, {1.0, 16, bits[i]}), S(l, {1.0, 16, bits[i + 1]})) << "layer " << l;
    }
  }
}

TEST_F(CommittedTableTest, LayersDifferByMoreThan10xOnEveryAxis) {
  for (const CompressionTuple& t :
       {CompressionTuple{0.25, 16, 16}, CompressionTuple{1.0, 2, 16}, CompressionTuple{1.0, 16, 2}}) {
    double lo = 1e300, hi = 0;
    for (size_t l = 0; l < 12; ++l) {
      lo = std::min(lo, S(l, t));
      hi = std::max(hi, S(l, t));
    }
    EXPECT_GT(hi / lo, 10.0) << ToString(t);
  }
}

}  // namespace
}  // namespace moend

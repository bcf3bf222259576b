// CompareSensitivities (core/sensitivity_table.h): Spearman rank correlation
// and relative differences, checked against values worked out by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/sensitivity_table.h"

namespace moend {
namespace {

using Table = std::vector<std::vector<double>>;

TEST(SensitivityAgreementTest, IdenticalAndReversedOrders) {
  const Table b = {{0.0, 1e-4, 3e-2}, {5e-3, 0.5, 2.0}};
  auto same = CompareSensitivities(b, b);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->entries, 6);
  EXPECT_DOUBLE_EQ(same->spearman, 1.0);
  EXPECT_EQ(same->worst_relative, 0.0);
  EXPECT_EQ(same->median_relative, 0.0);
  auto reversed = CompareSensitivities({{6, 5, 4}, {3, 2, 1}}, {{1, 2, 3}, {4, 5, 6}});
  ASSERT_TRUE(reversed.ok());
  EXPECT_DOUBLE_EQ(reversed->spearman, -1.0);
}

TEST(SensitivityAgreementTest, OneSwapAndRelativeDifferences) {
  // Ranks 1..6 with the neighbours 3 and 4 swapped: sum d^2 = 2, so
  // rho = 1 - 6 * 2 / (6 * (36 - 1)) = 1 - 2 / 35.
  const Table b = {{1, 2, 3}, {4, 5, 10}};
  const Table a = {{1, 2, 4.5}, {4, 5, 12}};
  auto r = CompareSensitivities(a, b);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->spearman, 1.0 - 2.0 / 35.0, 1e-12);
  // Relative differences 0, 0, 0.5, 0, 0, 0.2: worst 0.5 at (0, 2); median
  // (the upper of the two middle values of 0 0 0 0 0.2 0.5) 0.
  EXPECT_DOUBLE_EQ(r->worst_relative, 0.5);
  EXPECT_EQ(r->worst_layer, 0);
  EXPECT_EQ(r->worst_tuple, 2);
  EXPECT_EQ(r->median_relative, 0.0);
  auto median = CompareSensitivities({{1.1, 2.4, 3.3}}, {{1, 2, 3}});
  ASSERT_TRUE(median.ok());
  EXPECT_NEAR(median->median_relative, 0.1, 1e-12);  // of 0.1, 0.2, 0.1
  EXPECT_NEAR(median->worst_relative, 0.2, 1e-12);
}

TEST(SensitivityAgreementTest, TiesTakeTheirAverageRank) {
  // Both sides rank as (1.5, 1.5, 3): identical orders despite the ties.
  auto r = CompareSensitivities({{0, 0, 1}}, {{0, 0, 2}});
  ASSERT_TRUE(r.ok());
  EXPECT_NEAR(r->spearman, 1.0, 1e-12);
  // A tie on one side only: ranks (1.5, 1.5, 3) vs (1, 2, 3): rho = sqrt(3)/2.
  auto half = CompareSensitivities({{0, 0, 1}}, {{1, 2, 3}});
  ASSERT_TRUE(half.ok());
  EXPECT_NEAR(half->spearman, std::sqrt(3.0) / 2, 1e-12);
}

TEST(SensitivityAgreementTest, MinReferenceLeavesTinyErrorsOut) {
  // 1e-8 -> 2e-8 moves by 100%; above the floor the worst is 0.1 (at (1, 0)).
  const Table b = {{0.0, 1e-8, 0.5}, {2e-3, 0.3, 0.4}};
  const Table a = {{0.0, 2e-8, 0.5}, {2.2e-3, 0.3, 0.4}};
  auto all = CompareSensitivities(a, b);
  ASSERT_TRUE(all.ok());
  EXPECT_NEAR(all->worst_relative, 1.0, 1e-12);
  EXPECT_EQ(all->worst_tuple, 1);
  auto floor = CompareSensitivities(a, b, 1e-6);
  ASSERT_TRUE(floor.ok());
  EXPECT_NEAR(floor->worst_relative, 0.1, 1e-12);
  EXPECT_EQ(floor->worst_layer, 1);
  EXPECT_EQ(floor->worst_tuple, 0);
  EXPECT_EQ(floor->spearman, all->spearman);  // ranks use every entry
  // A zero reference below the floor is left out, not infinitely far.
  auto zero = CompareSensitivities({{1e-9, 0.5}}, {{0.0, 0.5}}, 1e-6);
  ASSERT_TRUE(zero.ok());
  EXPECT_EQ(zero->worst_relative, 0.0);
  auto none = CompareSensitivities({{1e-9}}, {{1e-9}}, 1e-6);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->worst_layer, -1);
}

TEST(SensitivityAgreementTest, ZeroReferenceAndBadShapes) {
  auto r = CompareSensitivities({{0.0, 1e-9}}, {{0.0, 0.0}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->worst_relative, std::numeric_limits<double>::infinity());
  EXPECT_EQ(r->worst_tuple, 1);
  EXPECT_EQ(CompareSensitivities({{1, 2}}, {{1, 2, 3}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompareSensitivities({}, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompareSensitivities({{1}}, {{1}, {2}}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moend

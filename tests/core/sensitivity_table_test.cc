// The per-head part of sensitivity tables (s_head), the signals line and
// SumTables.
#include "core/sensitivity_table.h"

#include <gtest/gtest.h>

#include <string>

#include "nlohmann/json.hpp"

namespace moend {
namespace {

SensitivityTable TwoHeadTable(double scale) {
  SensitivityTable t;
  t.model = "m";
  t.num_layers = 2;
  t.num_kv_heads = 2;
  t.head_dim = 64;
  t.seq_len = 4096;
  t.compression_point = 3840;
  t.samples = 3;
  t.tuples = {{1.0, 16, 16}, {0.5, 4, 2}};
  t.s = {{0, 0.25 * scale}, {0, 0.5 * scale}};
  t.s_head = {{{0, 0.125 * scale}, {0, 0.375 * scale}}, {{0, 1 * scale}, {0, 0.0625 * scale}}};
  t.signals = {"code"};
  return t;
}

TEST(SensitivityTableTest, PerHeadRowsAndSignalsRoundTrip) {
  const SensitivityTable t = TwoHeadTable(1);
  ASSERT_TRUE(t.Validate().ok()) << t.Validate();
  const std::string text = SensitivityTableToJson(t);
  auto back = SensitivityTableFromJson(text);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->s_head, t.s_head);
  EXPECT_EQ(back->signals, t.signals);
  EXPECT_EQ(back->s, t.s);
  // A table without s_head (every table before per-head routing) still reads.
  nlohmann::json j = nlohmann::json::parse(text);
  j.erase("s_head");
  j.erase("signals");
  auto old = SensitivityTableFromJson(j.dump());
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_FALSE(old->has_heads());
}

TEST(SensitivityTableTest, RejectsMisshapenOrBadPerHeadRows) {
  {
    SensitivityTable t = TwoHeadTable(1);
    t.s_head[1].pop_back();
    EXPECT_NE(t.Validate().message().find("s_head layer 1 has 1 heads"), std::string::npos)
        << t.Validate();
  }
  {
    SensitivityTable t = TwoHeadTable(1);
    t.s_head[0][1].push_back(0.0);
    EXPECT_NE(t.Validate().message().find("s_head[0][1] has 3 values"), std::string::npos)
        << t.Validate();
  }
  {
    SensitivityTable t = TwoHeadTable(1);
    t.s_head.pop_back();
    EXPECT_FALSE(t.Validate().ok());
  }
  {
    nlohmann::json j = nlohmann::json::parse(SensitivityTableToJson(TwoHeadTable(1)));
    j["s_head"][0][0][1] = nullptr;  // NaN
    auto bad = SensitivityTableFromJson(j.dump());
    EXPECT_NE(bad.status().message().find("s_head[0][0][1]"), std::string::npos) << bad.status();
    j["s_head"][0][0][1] = -1.0;
    EXPECT_FALSE(SensitivityTableFromJson(j.dump()).ok());
    j["s_head"][0][0][1] = "x";
    EXPECT_FALSE(SensitivityTableFromJson(j.dump()).ok());
  }
}

TEST(SensitivityTableTest, SumTablesAddsBothSignals) {
  SensitivityTable b = TwoHeadTable(2);
  b.samples = 8;
  b.seq_len = 1024;
  b.compression_point = 1000;
  b.signals = {"recall"};
  auto sum = SumTables(TwoHeadTable(1), b);
  ASSERT_TRUE(sum.ok()) << sum.status();
  EXPECT_DOUBLE_EQ(sum->s[1][1], 0.5 * 3);
  EXPECT_DOUBLE_EQ(sum->s_head[0][1][1], 0.375 * 3);
  EXPECT_DOUBLE_EQ(sum->s_head[1][0][1], 1.0 * 3);
  EXPECT_EQ(sum->samples, 11);
  // The first table's context is the plan budgets' default.
  EXPECT_EQ(sum->compression_point, 3840);
  EXPECT_EQ(sum->signals, (std::vector<std::string>{"code", "recall"}));
  // Without s_head on one side the sum has none.
  b.s_head.clear();
  auto no_heads = SumTables(TwoHeadTable(1), b);
  ASSERT_TRUE(no_heads.ok()) << no_heads.status();
  EXPECT_FALSE(no_heads->has_heads());
  // Different grids, shapes or models cannot be added.
  SensitivityTable other = TwoHeadTable(1);
  other.tuples[1].kbits = 8;
  EXPECT_EQ(SumTables(TwoHeadTable(1), other).status().code(), absl::StatusCode::kInvalidArgument);
  other = TwoHeadTable(1);
  other.model = "n";
  EXPECT_NE(SumTables(TwoHeadTable(1), other).status().message().find("models"),
            std::string::npos);
}

}  // namespace
}  // namespace moend

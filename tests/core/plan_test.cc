#include "core/plan.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <string>

#include "nlohmann/json.hpp"

namespace moend {
namespace {

using nlohmann::json;

Plan SamplePlan() {
  Plan p;
  p.model = "tinycode";
  p.solver = "exact";
  p.budget_bytes = 100000;
  p.context = 3840;
  p.layers = {{{1.0, 16, 16}, 40000, 0.0},
              {{0.25, 4, 2}, 7168, 0.125},
              {{0.0625, 2, 8}, 3104, 0.0300000000000000001}};
  for (const PlanLayer& l : p.layers) {
    p.total_bytes += l.bytes;
    p.predicted_error += l.predicted_error;
  }
  p.ratio = 2.5;
  return p;
}

TEST(PlanTest, JsonRoundTripIsExact) {
  const Plan p = SamplePlan();
  ASSERT_TRUE(p.Validate().ok()) << p.Validate();
  const std::string text = PlanToJson(p);
  absl::StatusOr<Plan> back = PlanFromJson(text);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, p);
  // The documented field names are what is written.
  json j = json::parse(text);
  for (const char* f : {"model", "solver", "budget_bytes", "context", "total_bytes", "ratio",
                        "predicted_error", "layers"}) {
    EXPECT_TRUE(j.contains(f)) << f;
  }
  for (const char* f : {"keep", "kbits", "vbits", "bytes", "predicted_error"}) {
    EXPECT_TRUE(j["layers"][0].contains(f)) << f;
  }
  EXPECT_EQ(j["layers"][1]["kbits"], 4);
  EXPECT_EQ(j["layers"][1]["keep"], 0.25);
}

TEST(PlanTest, FileRoundTrip) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("plan_test_" + std::to_string(::getpid()) + ".json"))
          .string();
  ASSERT_TRUE(WritePlan(SamplePlan(), path).ok());
  absl::StatusOr<Plan> back = ReadPlan(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, SamplePlan());
  std::filesystem::remove(path);
  absl::StatusOr<Plan> missing = ReadPlan(path);
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find(path), std::string::npos);
}

TEST(PlanTest, WriteRejectsInvalidPlan) {
  Plan p = SamplePlan();
  p.total_bytes += 1;
  EXPECT_EQ(WritePlan(p, "/nonexistent-dir/never-written.json").code(),
            absl::StatusCode::kInvalidArgument);
}

// Applies `edit` to the sample plan's JSON and expects InvalidArgument whose
// message contains `needle`.
void ExpectRejected(const std::function<void(json&)>& edit, const std::string& needle) {
  json j = json::parse(PlanToJson(SamplePlan()));
  edit(j);
  absl::StatusOr<Plan> p = PlanFromJson(j.dump());
  ASSERT_FALSE(p.ok()) << "accepted: " << j.dump();
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(p.status().message().find(needle), std::string::npos)
      << "message '" << p.status().message() << "' lacks '" << needle << "'";
}

TEST(PlanTest, RejectsMissingFields) {
  for (const char* f : {"model", "solver", "budget_bytes", "context", "total_bytes", "ratio",
                        "predicted_error", "layers"}) {
    ExpectRejected([&](json& j) { j.erase(f); }, f);
  }
  for (const char* f : {"keep", "kbits", "vbits", "bytes", "predicted_error"}) {
    ExpectRejected([&](json& j) { j["layers"][1].erase(f); }, f);
  }
}

TEST(PlanTest, RejectsWrongTypes) {
  ExpectRejected([](json& j) { j["model"] = 3; }, "model");
  ExpectRejected([](json& j) { j["budget_bytes"] = "100000"; }, "budget_bytes");
  ExpectRejected([](json& j) { j["budget_bytes"] = 100000.5; }, "budget_bytes");
  ExpectRejected([](json& j) { j["context"] = true; }, "context");
  ExpectRejected([](json& j) { j["ratio"] = "2.5"; }, "ratio");
  ExpectRejected([](json& j) { j["layers"] = json::object(); }, "layers");
  ExpectRejected([](json& j) { j["layers"][0] = 7; }, "layer 0");
  ExpectRejected([](json& j) { j["layers"][0]["kbits"] = 4.0; }, "kbits");
  ExpectRejected([](json& j) { j["layers"][0]["bytes"] = nullptr; }, "bytes");
  ExpectRejected([](json& j) { j["budget_bytes"] = 18446744073709551615ull; }, "budget_bytes");
}

TEST(PlanTest, RejectsBadTuplesAndInconsistentTotals) {
  ExpectRejected([](json& j) { j["layers"][1]["kbits"] = 3; }, "kbits");
  ExpectRejected([](json& j) { j["layers"][1]["vbits"] = 32; }, "vbits");
  ExpectRejected([](json& j) { j["layers"][1]["keep"] = 0.0; }, "keep");
  ExpectRejected([](json& j) { j["layers"][1]["keep"] = 1.5; }, "keep");
  ExpectRejected([](json& j) { j["layers"][1]["bytes"] = 0; }, "bytes");
  ExpectRejected([](json& j) { j["layers"][1]["predicted_error"] = -0.5; }, "predicted_error");
  ExpectRejected([](json& j) { j["total_bytes"] = j["total_bytes"].get<int64_t>() + 16; },
                 "total_bytes");
  ExpectRejected([](json& j) { j["budget_bytes"] = j["total_bytes"].get<int64_t>() - 1; },
                 "exceeds budget_bytes");
  ExpectRejected([](json& j) { j["predicted_error"] = 1.0; }, "predicted_error");
  ExpectRejected([](json& j) { j["ratio"] = 0.0; }, "ratio");
  ExpectRejected([](json& j) { j["context"] = 0; }, "context");
  ExpectRejected([](json& j) { j["solver"] = ""; }, "solver");
  ExpectRejected([](json& j) { j["layers"] = json::array(); }, "no layers");
  absl::StatusOr<Plan> not_json = PlanFromJson("{\"model\": ");
  EXPECT_EQ(not_json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanFromJson("[1, 2]").status().code(), absl::StatusCode::kInvalidArgument);
}

// SamplePlan with layer 1 per head: (0.25,4,2) for head 0, (1,4,4) for head 1.
Plan PerHeadPlan() {
  Plan p = SamplePlan();
  PlanLayer& l = p.layers[1];
  l.tuple = {};  // unused by a per-head layer
  l.heads = {{{0.25, 4, 2}, 3584, 0.125}, {{1.0, 4, 4}, 9000, 0.0}};
  p.total_bytes += 3584 + 9000 - l.bytes;
  l.bytes = 3584 + 9000;
  return p;
}

TEST(PlanTest, PerHeadLayersRoundTripAndExpandForTheRuntime) {
  const Plan p = PerHeadPlan();
  ASSERT_TRUE(p.Validate().ok()) << p.Validate();
  const std::string text = PlanToJson(p);
  absl::StatusOr<Plan> back = PlanFromJson(text);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, p);
  json j = json::parse(text);
  // A per-head layer has no layer-level tuple, so an older reader rejects it.
  EXPECT_FALSE(j["layers"][1].contains("keep"));
  EXPECT_EQ(j["layers"][1]["heads"][1]["vbits"], 4);
  EXPECT_TRUE(j["layers"][0].contains("keep"));
  EXPECT_EQ(p.HeadsPerLayer(), 2);
  const std::vector<CompressionTuple> rt = p.RuntimeTuples();
  const std::vector<CompressionTuple> want = {{1.0, 16, 16}, {1.0, 16, 16}, {0.25, 4, 2},
                                              {1.0, 4, 4},   {0.0625, 2, 8}, {0.0625, 2, 8}};
  EXPECT_EQ(rt, want);
  EXPECT_EQ(SamplePlan().RuntimeTuples().size(), 3u);
}

TEST(PlanTest, PerHeadLayersMustAddUp) {
  {
    Plan p = PerHeadPlan();
    p.layers[1].bytes += 1;
    p.total_bytes += 1;
    EXPECT_NE(p.Validate().message().find("sum of its heads"), std::string::npos) << p.Validate();
  }
  {
    Plan p = PerHeadPlan();
    p.layers[1].heads[0].predicted_error = 0.5;
    EXPECT_FALSE(p.Validate().ok());
  }
  {
    Plan p = PerHeadPlan();
    p.layers[1].heads[1].tuple.kbits = 3;
    EXPECT_NE(p.Validate().message().find("layer 1 head 1"), std::string::npos) << p.Validate();
  }
  {
    // Every per-head layer has the same number of heads.
    Plan p = PerHeadPlan();
    p.layers[2].heads = {{{0.0625, 2, 8}, 3104, 0.0300000000000000001}};
    EXPECT_NE(p.Validate().message().find("heads"), std::string::npos) << p.Validate();
  }
  {
    json j = json::parse(PlanToJson(PerHeadPlan()));
    j["layers"][1]["heads"] = json::array();
    EXPECT_FALSE(PlanFromJson(j.dump()).ok());
    j["layers"][1]["heads"] = json::array({{{"keep", 0.5}, {"kbits", 4}, {"vbits", 4}}});
    auto bad = PlanFromJson(j.dump());
    EXPECT_NE(bad.status().message().find("bytes"), std::string::npos) << bad.status();
  }
}

TEST(BudgetTest, ValidatesFields) {
  EXPECT_TRUE(Budget::Ratio(1.0).Validate().ok());
  EXPECT_TRUE(Budget::Ratio(14.0, 16384).Validate().ok());
  EXPECT_TRUE(Budget::Bytes(1, 1).Validate().ok());
  for (double r : {0.0, 0.5, -3.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
    absl::Status s = Budget::Ratio(r).Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << r;
    EXPECT_NE(s.message().find(">= 1"), std::string::npos) << s;
  }
  EXPECT_EQ(Budget::Ratio(4.0, -1).Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Budget::Bytes(0, 4096).Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Budget::Bytes(-5, 4096).Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Budget::Bytes(100, 0).Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Budget::Bytes(100, Budget::kMaxContext + 1).Validate().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moend

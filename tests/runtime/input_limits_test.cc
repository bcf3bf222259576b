// Bad input found by the fuzzers (fuzz/): each case here crashed, hit
// undefined behaviour, allocated without bound or was silently accepted
// before, and is now a clear error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/file_util.h"
#include "runtime/model.h"
#include "core/model_config.h"
#include "runtime/safetensors.h"
#include "core/sensitivity_table.h"
#include "gmock/gmock.h"
#include "nlohmann/json.hpp"

namespace moend {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::HasSubstr;

// A valid one-layer table as JSON, for editing.
json SmallTable() {
  return {{"model", "m"},         {"num_layers", 1}, {"num_kv_heads", 2},
          {"head_dim", 64},       {"seq_len", 512},  {"compression_point", 256},
          {"samples", 1},         {"tuples", {{{"keep", 1.0}, {"kbits", 16}, {"vbits", 16}}}},
          {"s", {{0.0}}}};
}

TEST(SensitivityTableJsonTest, AcceptsTheValidTable) {
  EXPECT_TRUE(SensitivityTableFromJson(SmallTable().dump()).ok());
}

// nlohmann's get<int>() of 1e20 is undefined behaviour (UBSan trapped it);
// true, 12.5 and 2^32 + 4 were read as 1, 12 and 4.
TEST(SensitivityTableJsonTest, RejectsNumbersThatAreNotIntegersInRange) {
  struct Case {
    json::json_pointer field;
    json value;
    std::string message;
  };
  const std::vector<Case> cases = {
      {json::json_pointer("/num_layers"), 1e300, "\"num_layers\" must be an integer"},
      {json::json_pointer("/num_layers"), true, "\"num_layers\" must be an integer"},
      {json::json_pointer("/head_dim"), 64.5, "\"head_dim\" must be an integer"},
      {json::json_pointer("/samples"), 18446744073709551615ull, "\"samples\" is too large"},
      {json::json_pointer("/tuples/0/kbits"), 1e20, "\"kbits\" must be an integer"},
      {json::json_pointer("/tuples/0/vbits"), 4294967300ll, "\"vbits\" 4294967300 is not one of"},
      {json::json_pointer("/tuples/0/keep"), "1", "\"keep\" must be a number"},
      {json::json_pointer("/s/0/0"), "0", "s[0][0] must be a number"},
      {json::json_pointer("/s/0"), 0.5, "s row 0 must be an array"},
      {json::json_pointer("/tuples"), json::object(), "\"tuples\" must be an array"},
      {json::json_pointer("/model"), 7, "\"model\" must be a string"},
  };
  for (const Case& c : cases) {
    json j = SmallTable();
    j[c.field] = c.value;
    auto table = SensitivityTableFromJson(j.dump());
    ASSERT_FALSE(table.ok()) << j.dump();
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(table.status().message()), HasSubstr(c.message)) << j.dump();
  }
}

class InputLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("moend_input_limits_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes a safetensors file whose header is `header` and data `data_bytes` zeros.
  std::string WriteSafetensors(const json& header, size_t data_bytes,
                               const std::string& name = "model.safetensors") {
    const std::string h = header.dump();
    std::string out;
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((h.size() >> (8 * i)) & 0xff));
    out += h;
    out.append(data_bytes, '\0');
    const std::string path = (dir_ / name).string();
    EXPECT_TRUE(WriteFileAtomic(path, out).ok());
    return path;
  }

  // config.json (llama, vocab 8, hidden 16) with `edits`, and a checkpoint
  // holding only the F16 tensors `shapes`.
  void WriteModel(const json& edits, const std::vector<std::pair<std::string, std::vector<int64_t>>>& shapes) {
    json config = {{"model_type", "llama"},      {"vocab_size", 8},
                   {"hidden_size", 16},          {"intermediate_size", 8},
                   {"num_hidden_layers", 1},     {"num_attention_heads", 2}};
    config.update(edits);
    ASSERT_TRUE(WriteFileAtomic((dir_ / "config.json").string(), config.dump()).ok());
    json header = json::object();
    size_t offset = 0;
    for (const auto& [name, shape] : shapes) {
      size_t n = 1;
      for (int64_t d : shape) n *= static_cast<size_t>(d);
      header[name] = {{"dtype", "F16"}, {"shape", shape}, {"data_offsets", {offset, offset + 2 * n}}};
      offset += 2 * n;
    }
    WriteSafetensors(header, offset);
  }

  fs::path dir_;
};

// A dimension beyond int64 after a 0 kept the element count at 0 and was
// stored as a negative dimension.
TEST_F(InputLimitsTest, SafetensorsRejectsADimensionBeyondInt64AfterAZero) {
  const std::string path = WriteSafetensors(
      {{"t", {{"dtype", "F16"}, {"shape", {0, 18446744073709551615ull}}, {"data_offsets", {0, 0}}}}},
      0);
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("tensor t: shape is absurdly large"));
}

TEST(ModelConfigLimitsTest, RejectsANegativeSlidingWindow) {
  const json base = {{"model_type", "mistral"}, {"vocab_size", 8},        {"hidden_size", 16},
                     {"intermediate_size", 8},  {"num_hidden_layers", 1}, {"num_attention_heads", 2}};
  json ok = base;
  ok["sliding_window"] = 0;  // none
  EXPECT_TRUE(ParseModelConfig(ok.dump(), "config.json").ok());
  for (const json& window : {json(-4096), json(18446744073709551615ull)}) {
    json j = base;
    j["sliding_window"] = window;
    auto c = ParseModelConfig(j.dump(), "config.json");
    ASSERT_FALSE(c.ok()) << window;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("sliding_window must be"));
  }
}

// Sizes up to int64's maximum made the loader's products (heads x head_dim x
// hidden) overflow.
TEST(ModelConfigLimitsTest, RejectsSizesAboveTwoToThe24) {
  const json base = {{"model_type", "llama"},   {"vocab_size", 8},        {"hidden_size", 16},
                     {"intermediate_size", 8},  {"num_hidden_layers", 1}, {"num_attention_heads", 2}};
  for (const char* field : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "num_key_value_heads"}) {
    json j = base;
    j[field] = (int64_t{1} << 24) + 2;
    auto c = ParseModelConfig(j.dump(), "config.json");
    ASSERT_FALSE(c.ok()) << field;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented) << field;
    EXPECT_THAT(std::string(c.status().message()),
                HasSubstr(std::string(field) + " 16777218 is above the supported 16777216"));
  }
}

// Model::Load sized its layer list from num_hidden_layers (10^12 layers:
// std::length_error, the process aborted) before reading any layer.
TEST_F(InputLimitsTest, HugeLayerCountFailsAtTheFirstMissingTensor) {
  WriteModel({{"num_hidden_layers", 1 << 24}},
             {{"model.embed_tokens.weight", {8, 16}}, {"model.norm.weight", {16}},
              {"lm_head.weight", {8, 16}}});
  auto model = Model::Load(dir_.string());
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(model.status().message()),
              HasSubstr("missing tensor model.layers.0.input_layernorm.weight"));
}

// Model::Load allocated (H + 2 Hkv) x D x hidden floats for q/k/v before
// checking q_proj's shape: 200 GB here (std::bad_alloc, the process aborted).
TEST_F(InputLimitsTest, HugeHeadCountIsAShapeErrorNotAnAllocation) {
  WriteModel({{"num_attention_heads", 1 << 20}, {"num_key_value_heads", 1 << 20},
              {"head_dim", 1024}},
             {{"model.embed_tokens.weight", {8, 16}},
              {"model.norm.weight", {16}},
              {"lm_head.weight", {8, 16}},
              {"model.layers.0.input_layernorm.weight", {16}},
              {"model.layers.0.post_attention_layernorm.weight", {16}},
              {"model.layers.0.self_attn.q_proj.weight", {16, 16}}});
  auto model = Model::Load(dir_.string());
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()),
              HasSubstr("q_proj.weight has shape [16, 16] but config.json implies [1073741824, 16]"));
}

}  // namespace
}  // namespace moend

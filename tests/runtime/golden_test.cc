// The forward pass against golden/ (an independent float32 forward of the
// shipped model, cross-checked with Hugging Face transformers).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/file_util.h"
#include "runtime/model.h"

namespace moend {
namespace {

const std::string kModelDir = std::string(MOEND_SOURCE_DIR) + "/models/tinycode";
const std::string kGoldenDir = std::string(MOEND_SOURCE_DIR) + "/data/golden";

std::vector<int32_t> ReadTokens(const std::string& path) {
  auto bytes = ReadFile(path);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  std::vector<int32_t> tokens;
  for (unsigned char ch : *bytes) tokens.push_back(ch);
  return tokens;
}

std::vector<float> ReadF32(const std::string& path) {
  auto bytes = ReadFile(path);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  std::vector<float> out(bytes->size() / 4);
  std::memcpy(out.data(), bytes->data(), out.size() * 4);
  return out;
}

float MaxAbsDiff(const float* a, const float* b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

class GoldenTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto m = Model::Load(kModelDir);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = m->release();
  }
  static void TearDownTestSuite() { delete model_; }
  static Model* model_;
};
Model* GoldenTest::model_ = nullptr;

TEST_F(GoldenTest, LogitsMatchInputA) {
  std::vector<int32_t> tokens = ReadTokens(kGoldenDir + "/input_A.bin");
  ASSERT_EQ(tokens.size(), 512u);
  std::vector<float> k0, v0, k11;
  auto logits = model_->Forward(tokens, [&](const LayerActivations& a) {
    const size_t kv = static_cast<size_t>(2 * a.tokens * 64);
    if (a.layer == 0) {
      k0.assign(a.k, a.k + kv);
      v0.assign(a.v, a.v + kv);
    }
    if (a.layer == 11) k11.assign(a.k, a.k + kv);
  });
  ASSERT_TRUE(logits.ok()) << logits.status();
  std::vector<float> want = ReadF32(kGoldenDir + "/logits_A.f32");
  ASSERT_EQ(logits->size(), want.size());
  EXPECT_LE(MaxAbsDiff(logits->data(), want.data(), want.size()), 2e-3f);

  std::vector<float> want_k0 = ReadF32(kGoldenDir + "/k_layer0.f32");
  std::vector<float> want_v0 = ReadF32(kGoldenDir + "/v_layer0.f32");
  std::vector<float> want_k11 = ReadF32(kGoldenDir + "/k_layer11.f32");
  ASSERT_EQ(k0.size(), want_k0.size());
  ASSERT_EQ(v0.size(), want_v0.size());
  ASSERT_EQ(k11.size(), want_k11.size());
  EXPECT_LE(MaxAbsDiff(k0.data(), want_k0.data(), k0.size()), 1e-3f);
  EXPECT_LE(MaxAbsDiff(v0.data(), want_v0.data(), v0.size()), 1e-3f);
  EXPECT_LE(MaxAbsDiff(k11.data(), want_k11.data(), k11.size()), 1e-3f);
}

TEST_F(GoldenTest, LogitsMatchInputB) {
  std::vector<int32_t> tokens = ReadTokens(kGoldenDir + "/input_B.bin");
  ASSERT_EQ(tokens.size(), 4088u);
  auto logits = model_->Forward(tokens);
  ASSERT_TRUE(logits.ok()) << logits.status();
  std::vector<float> want = ReadF32(kGoldenDir + "/logits_B.f32");
  ASSERT_EQ(logits->size(), want.size());
  EXPECT_LE(MaxAbsDiff(logits->data(), want.data(), want.size()), 2e-3f);
}

TEST_F(GoldenTest, RejectsOutOfVocabularyTokens) {
  std::vector<int32_t> tokens = {1, 2, 256};
  auto logits = model_->Forward(tokens);
  EXPECT_EQ(logits.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(logits.status().message().find("position 2"), std::string::npos);
  EXPECT_FALSE(model_->Forward(std::vector<int32_t>{}).ok());
}

}  // namespace
}  // namespace moend

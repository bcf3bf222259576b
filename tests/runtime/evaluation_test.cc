#include "runtime/evaluation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "core/file_util.h"
#include "nlohmann/json.hpp"

namespace moend::runtime {
namespace {

const std::string kSrc = MOEND_SOURCE_DIR;

TEST(EvaluationTest, FullCacheReproducesTheShippedFullCacheAnswersAndForwardBitsPerByte) {
  auto model = Model::Load(kSrc + "/models/tinycode");
  ASSERT_TRUE(model.ok()) << model.status();
  auto prompts = ReadRetrievalFile(kSrc + "/data/retrieval.jsonl");
  ASSERT_TRUE(prompts.ok()) << prompts.status();
  ASSERT_EQ(prompts->size(), 80u);
  auto heldout = ReadFile(kSrc + "/data/heldout_code.bin");
  ASSERT_TRUE(heldout.ok());

  EvalOptions o;
  o.retrieval_limit = 4;
  o.bpb_windows = 1;
  o.bpb_window = 600;
  o.bpb_context = 400;
  std::vector<std::vector<CompressionTuple>> plans = {
      std::vector<CompressionTuple>(12, CompressionTuple{1.0, 16, 16}),
      std::vector<CompressionTuple>(12, CompressionTuple{0.0625, 2, 2})};
  auto results = Evaluate(**model, plans, *prompts, *heldout, o);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 2u);

  // The data records whether the full cache answers each prompt.
  int64_t expected = 0;
  std::ifstream f(kSrc + "/data/retrieval.jsonl");
  std::string line;
  for (int i = 0; i < 4 && std::getline(f, line); ++i) {
    expected += nlohmann::json::parse(line)["full_cache_correct"].get<bool>() ? 1 : 0;
  }
  const EvalResult& full = (*results)[0];
  EXPECT_EQ(full.retrieval_total, 4);
  EXPECT_EQ(full.retrieval_correct, expected);
  EXPECT_DOUBLE_EQ(full.ratio, 1.0);

  // Bits per byte of the full plan: the same as the plain forward pass over
  // the window, up to the fp16 rounding of the cache.
  std::vector<int32_t> window;
  for (int i = 0; i < 600; ++i) window.push_back(static_cast<unsigned char>((*heldout)[i]));
  auto logits = (*model)->Forward(window);
  ASSERT_TRUE(logits.ok());
  double bits = 0;
  for (int t = 400; t < 600; ++t) {
    const float* row = logits->data() + (t - 1) * 256;
    double z = 0, mx = *std::max_element(row, row + 256);
    for (int i = 0; i < 256; ++i) z += std::exp(row[i] - mx);
    bits += (std::log(z) - (row[window[t]] - mx)) / std::log(2.0);
  }
  EXPECT_EQ(full.bpb_bytes, 200);
  EXPECT_NEAR(full.bpb, bits / 200, 2e-3);

  // The tiniest plan really compresses and really costs quality.
  const EvalResult& tiny = (*results)[1];
  EXPECT_GT(tiny.ratio, 6.0);
  EXPECT_GT(tiny.bpb, full.bpb + 0.01);
}

TEST(EvaluationTest, RejectsMalformedRetrievalFilesAndImpossibleWindows) {
  const std::string path = ::testing::TempDir() + "/bad_retrieval.jsonl";
  ASSERT_TRUE(WriteFileAtomic(path, "{\"prompt\": \"no newline\", \"answer\": \"x\"}\n").ok());
  EXPECT_EQ(ReadRetrievalFile(path).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(WriteFileAtomic(path, "not json\n").ok());
  auto s = ReadRetrievalFile(path);
  EXPECT_NE(s.status().message().find(":1:"), std::string::npos) << s.status();
  auto model = Model::Load(kSrc + "/models/tinycode");
  ASSERT_TRUE(model.ok());
  EvalOptions o;
  o.bpb_windows = 1;
  std::vector<std::vector<CompressionTuple>> plans = {std::vector<CompressionTuple>(12)};
  EXPECT_FALSE(Evaluate(**model, plans, {}, "too short", o).ok());
}

}  // namespace
}  // namespace moend::runtime

// Bad input is an error Status, never a crash.
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/kv_compress.h"
#include "tests/kernels/brute_force.h"

namespace moend::kernels {
namespace {

using testing::RandomActivations;

class BadInputTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (GetParam() == Backend::kCuda && !CudaDeviceAvailable()) {
      GTEST_SKIP() << CudaUnavailableReason();
    }
  }
};

TEST_P(BadInputTest, CompressionRejectsBadArguments) {
  const auto a = RandomActivations(8, 2, 100, 64, 1);
  const LayerTensors x{a.q.data(), a.k.data(), a.v.data(), 8, 2, 100, 64};
  const Backend b = GetParam();
  EXPECT_EQ(CompressLayer(x, 90, {0.5, 3, 4}, b).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompressLayer(x, 90, {0.5, 4, 32}, b).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompressLayer(x, 90, {0.0, 4, 4}, b).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompressLayer(x, 90, {1.5, 4, 4}, b).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompressLayer(x, 90, {-0.5, 4, 4}, b).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompressLayer(x, 101, {0.5, 4, 4}, b).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompressLayer(x, 0, {0.5, 4, 4}, b).status().code(), absl::StatusCode::kInvalidArgument);
  LayerTensors bad = x;
  bad.head_dim = 96;
  const auto st = CompressLayer(bad, 90, {0.5, 4, 4}, b).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("64, 128"), std::string::npos) << st;
  bad = x;
  bad.num_heads = 7;  // not a multiple of num_kv_heads
  EXPECT_EQ(CompressLayer(bad, 90, {0.5, 4, 4}, b).status().code(), absl::StatusCode::kInvalidArgument);
  bad = x;
  bad.k = nullptr;
  EXPECT_EQ(CompressLayer(bad, 90, {0.5, 4, 4}, b).status().code(), absl::StatusCode::kInvalidArgument);
  bad = x;
  bad.q = nullptr;
  EXPECT_EQ(ComputeEvictionScores(bad, 90, b).status().code(), absl::StatusCode::kInvalidArgument);

  auto scores = ComputeEvictionScores(x, 90, b);
  ASSERT_TRUE(scores.ok()) << scores.status();
  EXPECT_EQ(SelectKept(*scores, 59, b).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SelectKept(*scores, -1, b).status().code(), absl::StatusCode::kInvalidArgument);
  EvictionScores broken = *scores;
  broken.score.pop_back();
  EXPECT_EQ(SelectKept(broken, 3, b).status().code(), absl::StatusCode::kInvalidArgument);
  auto kept = SelectKept(*scores, 10, b);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(QuantizeKept(x, *kept, 4, 5, b).status().code(), absl::StatusCode::kInvalidArgument);
  KeptSet unsorted = *kept;
  std::swap(unsorted.index[0], unsorted.index[1]);
  EXPECT_EQ(QuantizeKept(x, unsorted, 4, 4, b).status().code(), absl::StatusCode::kInvalidArgument);
  KeptSet out_of_range = *kept;
  out_of_range.index[9] = 58;  // candidates are [0, 58)
  EXPECT_EQ(QuantizeKept(x, out_of_range, 4, 4, b).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(BadInputTest, AttentionRejectsMismatchedShapes) {
  const Backend b = GetParam();
  const auto a = RandomActivations(8, 2, 100, 64, 2);
  const LayerTensors x{a.q.data(), a.k.data(), a.v.data(), 8, 2, 100, 64};
  auto l1 = CompressLayer(x, 90, {0.5, 4, 4}, Backend::kReference);
  auto l2 = CompressLayer(x, 90, {0.5, 2, 4}, Backend::kReference);
  ASSERT_TRUE(l1.ok() && l2.ok());
  std::vector<float> q(2 * 8 * 64, 0.5f), out(q.size());
  const CompressedLayer* mixed[2] = {&*l1, &*l2};
  EXPECT_EQ(DecodeAttention(mixed, q.data(), 8, out.data(), b).code(), absl::StatusCode::kInvalidArgument);
  const CompressedLayer* one[1] = {&*l1};
  EXPECT_EQ(DecodeAttention(one, q.data(), 7, out.data(), b).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeAttention(one, nullptr, 8, out.data(), b).code(), absl::StatusCode::kInvalidArgument);
  const CompressedLayer* null_cache[1] = {nullptr};
  EXPECT_EQ(DecodeAttention(null_cache, q.data(), 8, out.data(), b).code(), absl::StatusCode::kInvalidArgument);
  CompressedLayer corrupt = *l1;
  corrupt.head(1).k_codes.pop_back();
  const CompressedLayer* bad[1] = {&corrupt};
  EXPECT_EQ(DecodeAttention(bad, q.data(), 8, out.data(), b).code(), absl::StatusCode::kInvalidArgument);

  ProbeQueries pq;
  pq.q = a.q.data();
  pq.num_heads = 8;
  pq.num_queries = 10;
  pq.q_head_stride = 100;
  pq.k_tail = a.k.data();
  pq.v_tail = a.v.data();
  pq.tail_tokens = 8;  // fewer tail rows than queries
  pq.tail_head_stride = 100;
  std::vector<float> po(8 * 10 * 64);
  EXPECT_EQ(ProbeAttention(*l1, pq, po.data(), b).code(), absl::StatusCode::kInvalidArgument);
  pq.tail_tokens = 10;
  pq.k_tail = nullptr;
  EXPECT_EQ(ProbeAttention(*l1, pq, po.data(), b).code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(BadInputTest, CompressHeadsRejectsBadTuplesAndScores) {
  const Backend b = GetParam();
  const auto a = RandomActivations(8, 2, 100, 64, 3);
  const LayerTensors x{a.q.data(), a.k.data(), a.v.data(), 8, 2, 100, 64};
  const std::vector<CompressionTuple> three(3, CompressionTuple{0.5, 4, 4});
  auto st = CompressHeads(x, 90, three, b).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("3 compression tuples for 2 KV heads"), std::string::npos) << st;
  EXPECT_EQ(CompressHeads(x, 90, {}, b).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<CompressionTuple> bad_head = {{0.5, 4, 4}, {0.5, 4, 3}};
  st = CompressHeads(x, 90, bad_head, b).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("KV head 1: V bits 3"), std::string::npos) << st;
  const std::vector<CompressionTuple> bad_keep = {{0.0, 4, 4}, {0.5, 4, 4}};
  st = CompressHeads(x, 90, bad_keep, b).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("KV head 0"), std::string::npos) << st;
  // Scores of another prefix or head count.
  const std::vector<CompressionTuple> mixed = {{0.5, 4, 4}, {0.25, 2, 8}};
  auto scores = ComputeEvictionScores(x, 80, Backend::kReference);
  ASSERT_TRUE(scores.ok());
  EXPECT_EQ(CompressHeads(x, 90, mixed, b, &*scores).status().code(),
            absl::StatusCode::kInvalidArgument);
  EvictionScores short_scores = *scores;
  short_scores.score.pop_back();
  EXPECT_EQ(CompressHeads(x, 80, mixed, b, &short_scores).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(BadInputTest, AttentionRejectsCachesOfOtherPerHeadBits) {
  const Backend b = GetParam();
  const auto a = RandomActivations(8, 2, 100, 64, 4);
  const LayerTensors x{a.q.data(), a.k.data(), a.v.data(), 8, 2, 100, 64};
  const std::vector<CompressionTuple> t1 = {{0.5, 4, 4}, {0.5, 2, 8}};
  const std::vector<CompressionTuple> t2 = {{0.5, 4, 4}, {0.5, 2, 4}};
  auto l1 = CompressHeads(x, 90, t1, Backend::kReference);
  auto l2 = CompressHeads(x, 90, t2, Backend::kReference);
  ASSERT_TRUE(l1.ok() && l2.ok());
  std::vector<float> q(2 * 8 * 64, 0.5f), out(q.size());
  const CompressedLayer* both[2] = {&*l1, &*l2};
  const absl::Status st = DecodeAttention(both, q.data(), 8, out.data(), b);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("[4/4 2/8]"), std::string::npos) << st;
  EXPECT_NE(st.message().find("[4/4 2/4]"), std::string::npos) << st;
  // Head 1's buffers sized for the other head's bits.
  CompressedLayer corrupt = *l1;
  corrupt.head(1).v_codes = corrupt.head(0).v_codes;
  const CompressedLayer* bad[1] = {&corrupt};
  EXPECT_EQ(DecodeAttention(bad, q.data(), 8, out.data(), b).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BackendTest, CudaRequestWithoutDeviceIsAnErrorNotACrash) {
  if (CudaDeviceAvailable()) GTEST_SKIP() << "a CUDA device is present";
  const auto a = RandomActivations(8, 2, 100, 64, 1);
  const LayerTensors x{a.q.data(), a.k.data(), a.v.data(), 8, 2, 100, 64};
  const auto st = CompressLayer(x, 90, {0.5, 4, 4}, Backend::kCuda).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  auto ok = CompressLayer(x, 90, {0.5, 4, 4}, Backend::kAuto);
  EXPECT_TRUE(ok.ok()) << ok.status();
}

INSTANTIATE_TEST_SUITE_P(Backends, BadInputTest, ::testing::Values(Backend::kReference, Backend::kCuda),
                         [](const auto& info) { return BackendName(info.param); });

}  // namespace
}  // namespace moend::kernels

// Device-resident caches and the plan/run decode (kernels/cuda/resident.h)
// against the reference decode (kernels::DecodeAttention, Backend::kReference)
// on host layers that had the same tokens appended. Skipped (with the
// reason) when no CUDA device is usable. Tolerance: tests/kernels/cuda_test.cc's,
// max |diff| <= 2e-3 * max |reference| for every bit width (the attention
// kernel is the same; the resident path only changes where the caches live).
#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "core/compression.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/kv_compress.h"
#include "tests/kernels/brute_force.h"

#ifdef MOEND_WITH_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/resident.h"
#endif

namespace moend::kernels {
namespace {

class CudaResidentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << CudaUnavailableReason();
  }
};

#ifdef MOEND_WITH_CUDA

using cuda::DecodePlan;
using cuda::DeviceLayerCache;
using testing::Activations;
using testing::RandomActivations;

constexpr double kAttentionTol = 2e-3;

LayerTensors View(const Activations& a) { return {a.q.data(), a.k.data(), a.v.data(), a.hq, a.hkv, a.n, a.d}; }

// RunDecode with host q and out (device copies around it).
void RunOnDevice(DecodePlan& plan, const std::vector<const DeviceLayerCache*>& caches,
                 const std::vector<float>& q, std::vector<float>* out) {
  float* dq = nullptr;
  float* dout = nullptr;
  ASSERT_EQ(cudaMalloc(&dq, q.size() * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, q.size() * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dq, q.data(), q.size() * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  const absl::Status st = cuda::RunDecode(plan, caches, dq, dout, nullptr);
  out->assign(q.size(), NAN);
  const cudaError_t copy = cudaMemcpy(out->data(), dout, q.size() * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(dq);
  cudaFree(dout);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(copy, cudaSuccess);
}

// The reference, one sequence at a time (a batch of the reference shares
// one format; the device batch need not).
std::vector<float> Reference(const std::vector<const CompressedLayer*>& layers, const std::vector<float>& q,
                             int64_t hq) {
  const int64_t d = layers[0]->format().head_dim;
  std::vector<float> out(q.size());
  for (size_t b = 0; b < layers.size(); ++b) {
    const CompressedLayer* one[1] = {layers[b]};
    EXPECT_TRUE(DecodeAttention(absl::MakeConstSpan(one, 1), q.data() + b * hq * d, hq, out.data() + b * hq * d,
                                Backend::kReference)
                    .ok());
  }
  return out;
}

// Device and host caches hold the same tokens: same counts and bytes.
void ExpectSameCounts(const DeviceLayerCache& dev, const CompressedLayer& host) {
  EXPECT_EQ(dev.appended_tokens(), host.appended_tokens());
  EXPECT_EQ(dev.residual_tokens(), host.residual_tokens());
  EXPECT_EQ(dev.window_tokens(), host.window_tokens());
  for (int64_t h = 0; h < host.format().num_kv_heads; ++h) {
    EXPECT_EQ(dev.quantized(h), host.head(h).quantized) << "head " << h;
  }
  EXPECT_EQ(dev.Bytes(), host.Bytes());
}

// Per sequence: its activations, its host layer, its device copy.
struct Sequence {
  Activations act;
  CompressedLayer host;
  std::unique_ptr<DeviceLayerCache> dev;
  int64_t next = 0;  // next row of act to append
};

void AppendBoth(Sequence& s, int64_t tokens) {
  const int64_t d = s.act.d;
  const float* k = s.act.k.data() + s.next * d;
  const float* v = s.act.v.data() + s.next * d;
  ASSERT_TRUE(s.host.Append(k, v, tokens, s.act.n).ok());
  const absl::Status st = s.dev->Append(k, v, tokens, s.act.n, nullptr);
  ASSERT_TRUE(st.ok()) << st;
  s.next += tokens;
}

void ExpectBatchAgrees(DecodePlan& plan, std::vector<Sequence>& seqs, int64_t hq, uint32_t seed,
                       const std::string& what) {
  std::vector<const CompressedLayer*> hosts;
  std::vector<const DeviceLayerCache*> devs;
  for (const Sequence& s : seqs) {
    hosts.push_back(&s.host);
    devs.push_back(s.dev.get());
    ExpectSameCounts(*s.dev, s.host);
  }
  const std::vector<float> q = testing::RandomQueries(seqs.size() * hq * seqs[0].act.d, seed);
  std::vector<float> gpu;
  ASSERT_NO_FATAL_FAILURE(RunOnDevice(plan, devs, q, &gpu));
  const std::vector<float> ref = Reference(hosts, q, hq);
  const double rel = testing::MaxAbsDiff(gpu, ref) / testing::MaxAbs(ref);
  std::printf("resident %s: max|diff|/max|ref| = %.2e\n", what.c_str(), rel);
  EXPECT_LE(rel, kAttentionTol) << what;
}

Sequence MakeSequence(int64_t hq, int64_t hkv, int64_t d, int64_t c, const std::vector<CompressionTuple>& tuples,
                      int64_t capacity, uint32_t seed) {
  Sequence s;
  s.act = RandomActivations(hq, hkv, c + capacity + 8, d, seed);
  auto layer = tuples.size() == 1 ? CompressLayer(View(s.act), c, tuples[0], Backend::kReference)
                                   : CompressHeads(View(s.act), c, tuples, Backend::kReference);
  EXPECT_TRUE(layer.ok()) << layer.status();
  s.host = std::move(*layer);
  auto dev = DeviceLayerCache::Upload(s.host, capacity);
  EXPECT_TRUE(dev.ok()) << dev.status();
  s.dev = std::move(*dev);
  s.next = c;
  return s;
}

TEST_F(CudaResidentTest, AppendAcrossAFlushMatchesTheReference) {
  const int64_t hq = 8, hkv = 2, c = 301, capacity = 45;
  for (int64_t d : {64, 128}) {
    std::vector<Sequence> seqs;
    seqs.push_back(MakeSequence(hq, hkv, d, c, {{0.5, 4, 2}}, capacity, 21 + d));
    Sequence& s = seqs[0];
    ASSERT_TRUE(s.dev != nullptr);
    std::vector<int64_t> kept;
    for (int64_t h = 0; h < hkv; ++h) kept.push_back(s.host.head(h).initial_kept);
    EXPECT_EQ(s.dev->CapacityBytes(), ReservedLayerBytes(s.host.format(), kept, s.host.window_tokens(), capacity));
    std::vector<const DeviceLayerCache*> devs = {s.dev.get()};
    auto plan = cuda::PlanDecode(devs, hq);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_NO_FATAL_FAILURE(ExpectBatchAgrees(*plan, seqs, hq, 1, "uploaded"));
    // 5 at once, then one by one past the flush at 32, then the rest.
    ASSERT_NO_FATAL_FAILURE(AppendBoth(s, 5));
    ASSERT_NO_FATAL_FAILURE(ExpectBatchAgrees(*plan, seqs, hq, 2, "5 appended"));
    for (int t = 0; t < 30; ++t) {
      ASSERT_NO_FATAL_FAILURE(AppendBoth(s, 1));
      ASSERT_NO_FATAL_FAILURE(
          ExpectBatchAgrees(*plan, seqs, hq, 3 + t, "appended " + std::to_string(s.dev->appended_tokens())));
    }
    ASSERT_NO_FATAL_FAILURE(AppendBoth(s, capacity - 35));
    ASSERT_NO_FATAL_FAILURE(ExpectBatchAgrees(*plan, seqs, hq, 40, "at capacity"));
    const absl::Status full = s.dev->Append(s.act.k.data(), s.act.v.data(), 1, s.act.n, nullptr);
    EXPECT_EQ(full.code(), absl::StatusCode::kOutOfRange) << full;
  }
}

TEST_F(CudaResidentTest, BatchWithOtherLengthsAndBits) {
  const int64_t hq = 28, hkv = 4, d = 128;
  std::vector<Sequence> seqs;
  seqs.push_back(MakeSequence(hq, hkv, d, 600, {{0.5, 4, 2}}, 64, 31));
  seqs.push_back(MakeSequence(hq, hkv, d, 17, {{1.0, 8, 8}}, 64, 32));
  seqs.push_back(MakeSequence(hq, hkv, d, 333, {{0.25, 4, 2}}, 64, 33));
  seqs.push_back(MakeSequence(hq, hkv, d, 1000, {{0.125, 2, 16}}, 64, 34));
  const std::vector<int64_t> appends = {5, 63, 32, 40};
  for (size_t b = 0; b < seqs.size(); ++b) ASSERT_NO_FATAL_FAILURE(AppendBoth(seqs[b], appends[b]));
  std::vector<const DeviceLayerCache*> devs;
  for (const Sequence& s : seqs) devs.push_back(s.dev.get());
  auto plan = cuda::PlanDecode(devs, hq);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->schedule().launches.size(), 4u);  // (4,2) (8,8) (4,2) (2,16): no two neighbours share bits
  ASSERT_NO_FATAL_FAILURE(ExpectBatchAgrees(*plan, seqs, hq, 7, "batch of 4 formats"));
}

TEST_F(CudaResidentTest, PlanIsReusedAcrossRuns) {
  const int64_t hq = 8, hkv = 2, d = 64, capacity = 48;
  std::vector<Sequence> seqs;
  for (int64_t c : {200, 37, 513}) seqs.push_back(MakeSequence(hq, hkv, d, c, {{0.5, 2, 4}}, capacity, 50 + c));
  std::vector<const DeviceLayerCache*> devs;
  for (const Sequence& s : seqs) devs.push_back(s.dev.get());
  auto plan = cuda::PlanDecode(devs, hq);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const cuda::DecodeSchedule before = plan->schedule();
  for (int64_t t = 0; t < capacity; ++t) {
    for (Sequence& s : seqs) ASSERT_NO_FATAL_FAILURE(AppendBoth(s, 1));
    ASSERT_NO_FATAL_FAILURE(ExpectBatchAgrees(*plan, seqs, hq, 100 + t, "step " + std::to_string(t)));
  }
  ASSERT_EQ(plan->schedule().launches.size(), before.launches.size());
  EXPECT_EQ(plan->schedule().launches[0].splits, before.launches[0].splits);
  EXPECT_EQ(plan->schedule().workspace_floats, before.workspace_floats);
}

TEST_F(CudaResidentTest, MixedPerHeadBitsLayer) {
  const int64_t hq = 28, hkv = 4, d = 128, capacity = 40;
  const std::vector<CompressionTuple> tuples = {{0.5, 4, 2}, {0.25, 8, 16}, {0.25, 8, 16}, {1.0, 2, 2}};
  std::vector<Sequence> seqs;
  for (int64_t c : {600, 17}) seqs.push_back(MakeSequence(hq, hkv, d, c, tuples, capacity, 70 + c));
  ASSERT_FALSE(seqs[0].host.format().Uniform());
  std::vector<const DeviceLayerCache*> devs;
  for (const Sequence& s : seqs) devs.push_back(s.dev.get());
  auto plan = cuda::PlanDecode(devs, hq);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->schedule().launches.size(), 3u);  // runs of 1, 2 and 1 KV heads
  for (int step = 0; step < 5; ++step) {
    for (Sequence& s : seqs) ASSERT_NO_FATAL_FAILURE(AppendBoth(s, 7));
    ASSERT_NO_FATAL_FAILURE(ExpectBatchAgrees(*plan, seqs, hq, 200 + step, "mixed, step " + std::to_string(step)));
  }
}

#else  // !MOEND_WITH_CUDA: SetUp skips every case (no CUDA kernels in this build).

TEST_F(CudaResidentTest, AppendAcrossAFlushMatchesTheReference) {}
TEST_F(CudaResidentTest, BatchWithOtherLengthsAndBits) {}
TEST_F(CudaResidentTest, PlanIsReusedAcrossRuns) {}
TEST_F(CudaResidentTest, MixedPerHeadBitsLayer) {}

#endif  // MOEND_WITH_CUDA

}  // namespace
}  // namespace moend::kernels

// CUDA kernels vs the C++ reference. Skipped (with the reason) when no CUDA
// device is usable.
//
// Tolerances. Quantize+pack: identical bytes (same float operations, fp16
// round to nearest even on both sides). Selection from the same scores:
// identical indices. Scores: max |diff| <= 1e-4 * max score (fp32 sums in a
// different order vs the reference's double sums). Attention: max |diff| <=
// kAttentionTol * max |reference|. The kernel runs q.k and p.v on tensor
// cores with fp16 operands and fp32 accumulation: q (pre-scaled), every
// dequantized k and v (code*scale+min by one fp16 FMA) and every probability
// p is rounded once to fp16 (relative 2^-11 = 4.9e-4 each); a logit of size
// |q||k| thus moves by ~|q||k| * 5e-4, i.e. probabilities by ~1e-3 relative
// at the logit sizes of these tests. Bound: 2e-3 of the largest output (the
// worst measured on an H100 was 7.7e-4; each case prints its error).
// The bound is the same for every bit width: the codes themselves are exact
// in fp16.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "core/compression.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/kv_compress.h"
#include "tests/kernels/brute_force.h"

namespace moend::kernels {
namespace {

using testing::Activations;
using testing::RandomActivations;

const std::map<int, double> kAttentionTol = {{2, 2e-3}, {4, 2e-3}, {8, 2e-3}, {16, 2e-3}};

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << CudaUnavailableReason();
  }
};

LayerTensors View(const Activations& a) { return {a.q.data(), a.k.data(), a.v.data(), a.hq, a.hkv, a.n, a.d}; }

void ExpectSameLayer(const CompressedLayer& a, const CompressedLayer& b, const std::string& what) {
  ASSERT_TRUE(a.format() == b.format()) << what;
  for (int64_t h = 0; h < a.format().num_kv_heads; ++h) {
    const CompressedHead& x = a.head(h);
    const CompressedHead& y = b.head(h);
    EXPECT_EQ(x.k_codes, y.k_codes) << what << " head " << h;
    EXPECT_EQ(x.k_scale, y.k_scale) << what << " head " << h;
    EXPECT_EQ(x.k_min, y.k_min) << what << " head " << h;
    EXPECT_EQ(x.v_codes, y.v_codes) << what << " head " << h;
    EXPECT_EQ(x.v_scale, y.v_scale) << what << " head " << h;
    EXPECT_EQ(x.v_min, y.v_min) << what << " head " << h;
    EXPECT_EQ(x.window_k, y.window_k) << what << " head " << h;
    EXPECT_EQ(x.window_v, y.window_v) << what << " head " << h;
    EXPECT_EQ(x.position, y.position) << what << " head " << h;
  }
  EXPECT_EQ(a.Bytes(), b.Bytes()) << what;
}

TEST_F(CudaTest, QuantizePackIsByteIdentical) {
  for (int64_t d : {64, 128}) {
    Activations a = RandomActivations(8, 2, 301, d, 3 + d);
    for (int64_t t = 0; t < a.n; ++t) {  // adversarial channels
      a.k[t * d + 1] = 0.5f;
      if (t % 13 == 0) a.k[t * d + 2] = 1e4f;
      for (int64_t e = 0; e < 32; ++e) a.v[t * d + e] = -3.0f;
    }
    const int64_t c = 301;
    auto scores = ComputeEvictionScores(View(a), c, Backend::kReference);
    ASSERT_TRUE(scores.ok());
    for (int64_t m : {int64_t{0}, int64_t{1}, int64_t{37}, int64_t{64}, c - 32}) {
      auto kept = SelectKept(*scores, m, Backend::kReference);
      ASSERT_TRUE(kept.ok());
      for (int kb : {2, 4, 8, 16}) {
        for (int vb : {2, 4, 8, 16}) {
          auto ref = QuantizeKept(View(a), *kept, kb, vb, Backend::kReference);
          auto gpu = QuantizeKept(View(a), *kept, kb, vb, Backend::kCuda);
          ASSERT_TRUE(ref.ok() && gpu.ok()) << gpu.status();
          ExpectSameLayer(*ref, *gpu, "D " + std::to_string(d) + " m " + std::to_string(m) + " bits " +
                                          std::to_string(kb) + "/" + std::to_string(vb));
        }
      }
    }
  }
}

TEST_F(CudaTest, ScoresAgree) {
  for (int64_t c : {33, 100, 1000, 2049}) {
    const Activations a = RandomActivations(28, 4, c, 128, 50 + c, 1.5f);
    auto ref = ComputeEvictionScores(View(a), c, Backend::kReference);
    auto gpu = ComputeEvictionScores(View(a), c, Backend::kCuda);
    ASSERT_TRUE(ref.ok() && gpu.ok()) << gpu.status();
    ASSERT_EQ(ref->score.size(), gpu->score.size());
    const double mx = *std::max_element(ref->score.begin(), ref->score.end());
    EXPECT_LE(testing::MaxAbsDiff(gpu->score, ref->score), 1e-4 * mx) << "c=" << c;
  }
  const Activations a = RandomActivations(8, 2, 500, 64, 9);
  auto ref = ComputeEvictionScores(View(a), 499, Backend::kReference);
  auto gpu = ComputeEvictionScores(View(a), 499, Backend::kCuda);
  ASSERT_TRUE(ref.ok() && gpu.ok());
  const double mx = *std::max_element(ref->score.begin(), ref->score.end());
  EXPECT_LE(testing::MaxAbsDiff(gpu->score, ref->score), 1e-4 * mx);
}

TEST_F(CudaTest, SelectionFromTheSameScoresIsIdentical) {
  const int64_t cand = 5000;
  EvictionScores s{4, cand + 32, cand, std::vector<float>(4 * cand)};
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (int64_t j = 0; j < cand; ++j) {
    s.score[j] = u(rng);                                  // distinct
    s.score[cand + j] = 0.25f;                            // all tied
    s.score[2 * cand + j] = static_cast<float>(j % 7);    // heavy ties
    s.score[3 * cand + j] = j % 100 == 0 ? 1e-3f : 0.0f;  // zeros and a few
  }
  for (int64_t m : {int64_t{0}, int64_t{1}, int64_t{50}, int64_t{1023}, int64_t{1024}, int64_t{2500}, cand - 1,
                    cand}) {
    auto ref = SelectKept(s, m, Backend::kReference);
    auto gpu = SelectKept(s, m, Backend::kCuda);
    ASSERT_TRUE(ref.ok() && gpu.ok()) << gpu.status();
    EXPECT_EQ(ref->index, gpu->index) << "m=" << m;
  }
}

TEST_F(CudaTest, EndToEndKeptSetsAreIdentical) {
  const int64_t c = 3000;
  const Activations a = RandomActivations(28, 4, c, 128, 77, 1.5f);
  auto ref_scores = ComputeEvictionScores(View(a), c, Backend::kReference);
  ASSERT_TRUE(ref_scores.ok());
  for (double keep : {0.75, 0.5, 0.25, 0.0625}) {
    const CompressionTuple t{keep, 4, 2};
    auto ref = CompressLayer(View(a), c, t, Backend::kReference);
    auto gpu = CompressLayer(View(a), c, t, Backend::kCuda);
    ASSERT_TRUE(ref.ok() && gpu.ok()) << gpu.status();
    const int64_t cand = c - 32;
    for (int64_t h = 0; h < 4; ++h) {
      const auto& rp = ref->head(h).position;
      const auto& gp = gpu->head(h).position;
      ASSERT_EQ(rp.size(), gp.size());
      // A difference is only acceptable between near-tied tokens at the cut:
      // the reference scores of both sides must be within 1e-5 relative.
      std::vector<int32_t> only_ref, only_gpu;
      std::set_difference(rp.begin(), rp.end(), gp.begin(), gp.end(), std::back_inserter(only_ref));
      std::set_difference(gp.begin(), gp.end(), rp.begin(), rp.end(), std::back_inserter(only_gpu));
      EXPECT_EQ(only_ref.size(), only_gpu.size());
      for (size_t i = 0; i < only_ref.size(); ++i) {
        const float x = ref_scores->score[h * cand + only_ref[i]];
        const float y = ref_scores->score[h * cand + only_gpu[i]];
        EXPECT_LE(std::fabs(x - y), 1e-5 * std::max(x, y)) << "keep " << keep << " head " << h;
      }
      EXPECT_LE(only_ref.size(), 2u) << "keep " << keep << " head " << h;
      if (only_ref.empty()) ExpectSameLayer(*ref, *gpu, "keep " + std::to_string(keep));
    }
  }
}

TEST_F(CudaTest, DecodeAttentionAgreesPerBitWidth) {
  struct Case { int64_t hq, hkv, d; };
  for (const Case& cs : {Case{28, 4, 128}, Case{8, 2, 64}, Case{20, 2, 128}}) {
    for (int bits : {16, 8, 4, 2}) {
      for (const CompressionTuple& t : {CompressionTuple{0.5, bits, bits}, CompressionTuple{0.25, bits, 16},
                                        CompressionTuple{1.0, 16, bits}}) {
        std::vector<Activations> acts;
        std::vector<CompressedLayer> layers;
        const std::vector<int64_t> prefixes = {600, 17, 333};
        const std::vector<int64_t> appends = {5, 70, 32};
        for (size_t b = 0; b < prefixes.size(); ++b) {
          acts.push_back(RandomActivations(cs.hq, cs.hkv, 700, cs.d, 1000 * bits + b));
          auto l = CompressLayer(View(acts.back()), prefixes[b], t, Backend::kReference);
          ASSERT_TRUE(l.ok());
          const int64_t c = prefixes[b];
          ASSERT_TRUE(l->Append(acts.back().k.data() + c * cs.d, acts.back().v.data() + c * cs.d, appends[b],
                                acts.back().n).ok());
          layers.push_back(std::move(*l));
        }
        std::vector<const CompressedLayer*> ptrs;
        for (const auto& l : layers) ptrs.push_back(&l);
        std::vector<float> q(prefixes.size() * cs.hq * cs.d);
        std::mt19937 rng(bits);
        std::normal_distribution<float> g(0.0f, 2.0f);
        for (float& x : q) x = g(rng);
        std::vector<float> ref(q.size()), gpu(q.size(), NAN);
        ASSERT_TRUE(DecodeAttention(ptrs, q.data(), cs.hq, ref.data(), Backend::kReference).ok());
        const absl::Status st = DecodeAttention(ptrs, q.data(), cs.hq, gpu.data(), Backend::kCuda);
        ASSERT_TRUE(st.ok()) << st;
        const double tol = kAttentionTol.at(std::min(t.kbits, t.vbits));
        const double rel = testing::MaxAbsDiff(gpu, ref) / testing::MaxAbs(ref);
        std::printf("decode %s hq %lld D %lld: max|diff|/max|ref| = %.2e\n", ToString(t).c_str(),
                    static_cast<long long>(cs.hq), static_cast<long long>(cs.d), rel);
        EXPECT_LE(rel, tol) << ToString(t) << " hq " << cs.hq << " D " << cs.d;
      }
    }
  }
}

// The first `probes` of the rows [tail, n) of `a` as probe queries over
// `layer` (the rest of those rows as the uncompressed tail), on the
// reference and on CUDA: *rel = max |cuda - ref| / max |ref|.
void ProbeError(const CompressedLayer& layer, const Activations& a, int64_t tail, int64_t n,
                int64_t d, int64_t hq, int64_t probes, double* rel) {
  ProbeQueries pq;
  pq.q = a.q.data() + tail * d;
  pq.num_heads = hq;
  pq.num_queries = probes;
  pq.q_head_stride = n;
  pq.k_tail = a.k.data() + tail * d;
  pq.v_tail = a.v.data() + tail * d;
  pq.tail_tokens = n - tail;
  pq.tail_head_stride = n;
  std::vector<float> ref(hq * probes * d), gpu(ref.size(), NAN);
  ASSERT_TRUE(ProbeAttention(layer, pq, ref.data(), Backend::kReference).ok());
  const absl::Status st = ProbeAttention(layer, pq, gpu.data(), Backend::kCuda);
  ASSERT_TRUE(st.ok()) << st;
  *rel = testing::MaxAbsDiff(gpu, ref) / testing::MaxAbs(ref);
}

TEST_F(CudaTest, ProbeAttentionAgrees) {
  const int64_t n = 1300, c = 1044, d = 128, hq = 28, probes = 256;
  const Activations a = RandomActivations(hq, 4, n, d, 99);
  for (const CompressionTuple& t : {CompressionTuple{0.5, 2, 2}, CompressionTuple{1.0, 16, 16},
                                    CompressionTuple{0.125, 8, 4}}) {
    auto layer = CompressLayer(View(a), c, t, Backend::kReference);
    ASSERT_TRUE(layer.ok());
    double rel = 0;
    ASSERT_NO_FATAL_FAILURE(ProbeError(*layer, a, c, n, d, hq, probes, &rel));
    std::printf("probe %s: max|diff|/max|ref| = %.2e\n", ToString(t).c_str(), rel);
    EXPECT_LE(rel, kAttentionTol.at(std::min(t.kbits, t.vbits))) << ToString(t);
  }
}

// Long prefixes seen by many probes (few splits): each warp walks several
// quantized units, so the staged loop of MOEND_ATTENTION_PIPELINE=1 wraps
// around its ring. The kept count is odd and groups are flushed after it
// (their V params are not 16-byte aligned: the synchronous fallback), next
// to the partial initial group, the window, a residual and the fp32 tail.
TEST_F(CudaTest, ProbeAttentionLongPrefixAgrees) {
  const int64_t n = 1800, c = 1401, appended = 70, hq = 28, hkv = 4, probes = 256;
  struct Case {
    int64_t d;
    CompressionTuple t;
  };
  for (const Case& cs : {Case{128, {1.0, 2, 2}}, Case{128, {1.0, 4, 8}}, Case{64, {0.75, 8, 4}}}) {
    const int64_t d = cs.d;
    const Activations a = RandomActivations(hq, hkv, n, d, 500 + cs.t.kbits);
    auto layer = CompressLayer(View(a), c, cs.t, Backend::kReference);
    ASSERT_TRUE(layer.ok());
    ASSERT_EQ(layer->head(0).initial_kept % 2, 1) << "the case needs an odd kept count";
    ASSERT_TRUE(layer->Append(a.k.data() + c * d, a.v.data() + c * d, appended, n).ok());
    double rel = 0;
    ASSERT_NO_FATAL_FAILURE(ProbeError(*layer, a, c + appended, n, d, hq, probes, &rel));
    std::printf("probe long %s D %lld: max|diff|/max|ref| = %.2e\n", ToString(cs.t).c_str(),
                static_cast<long long>(d), rel);
    EXPECT_LE(rel, kAttentionTol.at(std::min(cs.t.kbits, cs.t.vbits))) << ToString(cs.t) << " D " << d;
  }
}

// Per-head tuples (DESIGN.md section 2.9a): a mixed layer runs one launch per
// run of consecutive KV heads with equal bits (here runs of 1 and 2 heads),
// decode over a batch and probes with a tail. Compression of the mixed layer
// on CUDA is byte-identical to the reference when the selections agree.
TEST_F(CudaTest, MixedLayerAttentionAgrees) {
  struct Case { int64_t hq, hkv, d; std::vector<CompressionTuple> t; };
  const std::vector<Case> cases = {
      {28, 4, 128, {{0.5, 4, 2}, {0.25, 8, 16}, {0.25, 8, 16}, {1.0, 2, 2}}},
      {8, 2, 64, {{1.0, 16, 16}, {0.5, 2, 8}}}};
  for (const Case& cs : cases) {
    std::vector<Activations> acts;
    std::vector<CompressedLayer> layers;
    const std::vector<int64_t> prefixes = {600, 17, 333};
    const std::vector<int64_t> appends = {5, 70, 32};
    for (size_t b = 0; b < prefixes.size(); ++b) {
      acts.push_back(RandomActivations(cs.hq, cs.hkv, 700, cs.d, 4000 + b));
      auto l = CompressHeads(View(acts.back()), prefixes[b], cs.t, Backend::kReference);
      ASSERT_TRUE(l.ok()) << l.status();
      const int64_t c = prefixes[b];
      ASSERT_TRUE(l->Append(acts.back().k.data() + c * cs.d, acts.back().v.data() + c * cs.d,
                            appends[b], acts.back().n).ok());
      layers.push_back(std::move(*l));
    }
    std::vector<const CompressedLayer*> ptrs;
    for (const auto& l : layers) ptrs.push_back(&l);
    std::vector<float> q(prefixes.size() * cs.hq * cs.d);
    std::mt19937 rng(17);
    std::normal_distribution<float> g(0.0f, 2.0f);
    for (float& x : q) x = g(rng);
    std::vector<float> ref(q.size()), gpu(q.size(), NAN);
    ASSERT_TRUE(DecodeAttention(ptrs, q.data(), cs.hq, ref.data(), Backend::kReference).ok());
    const absl::Status st = DecodeAttention(ptrs, q.data(), cs.hq, gpu.data(), Backend::kCuda);
    ASSERT_TRUE(st.ok()) << st;
    const double rel = testing::MaxAbsDiff(gpu, ref) / testing::MaxAbs(ref);
    std::printf("decode mixed %s hq %lld D %lld: max|diff|/max|ref| = %.2e\n",
                BitsString(layers[0].format()).c_str(), static_cast<long long>(cs.hq),
                static_cast<long long>(cs.d), rel);
    EXPECT_LE(rel, kAttentionTol.at(2)) << "hq " << cs.hq << " D " << cs.d;

    const Activations& a = acts[0];
    double prel = 0;
    auto prefix = CompressHeads(View(a), 500, cs.t, Backend::kReference);
    ASSERT_TRUE(prefix.ok());
    ASSERT_NO_FATAL_FAILURE(ProbeError(*prefix, a, 500, a.n, cs.d, cs.hq, 100, &prel));
    std::printf("probe mixed hq %lld D %lld: max|diff|/max|ref| = %.2e\n",
                static_cast<long long>(cs.hq), static_cast<long long>(cs.d), prel);
    EXPECT_LE(prel, kAttentionTol.at(2)) << "hq " << cs.hq << " D " << cs.d;

    // Compression on the device from the reference's scores: same selection,
    // so the same bytes.
    auto scores = ComputeEvictionScores(View(a), 500, Backend::kReference);
    ASSERT_TRUE(scores.ok());
    auto on_gpu = CompressHeads(View(a), 500, cs.t, Backend::kCuda, &*scores);
    ASSERT_TRUE(on_gpu.ok()) << on_gpu.status();
    ExpectSameLayer(*prefix, *on_gpu, "mixed CompressHeads on CUDA");
  }
}

}  // namespace
}  // namespace moend::kernels

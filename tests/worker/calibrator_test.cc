#include "worker/calibrator.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include "core/file_util.h"
#include "runtime/token_file.h"
#include "kernels/attention.h"
#include "kernels/kv_compress.h"
#include "tests/worker/random_layer.h"

namespace moend::worker {
namespace {

using kernels::Backend;
using kernels::LayerTensors;

using ::moend::worker::testing::RandomLayer;

// Per KV head h: sum ||o'_tuple - o||^2 and sum ||o||^2 over the probes,
// channels and query heads of h's GQA group, computed independently through
// the kernels' reference CompressLayer + ProbeAttention (double-precision
// online softmax).
struct HeadSums {
  std::vector<double> err, norm;  // [num_kv_heads]
};
HeadSums IndependentHeadSums(const LayerTensors& x, int64_t probes, const CompressionTuple& tuple) {
  const int64_t c = x.tokens - probes, d = x.head_dim;
  auto attend = [&](const CompressionTuple& t) {
    auto layer = kernels::CompressLayer(x, c, t, Backend::kReference);
    EXPECT_TRUE(layer.ok()) << layer.status();
    kernels::ProbeQueries p;
    p.q = x.q + c * d;
    p.num_heads = x.num_heads;
    p.num_queries = probes;
    p.q_head_stride = x.tokens;
    p.k_tail = x.k + c * d;
    p.v_tail = x.v + c * d;
    p.tail_tokens = probes;
    p.tail_head_stride = x.tokens;
    p.query_offset = 0;
    std::vector<float> out(x.num_heads * probes * d);
    EXPECT_TRUE(kernels::ProbeAttention(*layer, p, out.data(), Backend::kReference).ok());
    return out;
  };
  std::vector<float> ref = attend({1.0, 16, 16}), got = attend(tuple);
  HeadSums sums{std::vector<double>(x.num_kv_heads, 0.0), std::vector<double>(x.num_kv_heads, 0.0)};
  const int64_t group = x.num_heads / x.num_kv_heads;
  for (size_t i = 0; i < ref.size(); ++i) {
    // out is [num_heads, probes, D]: element i belongs to query head i / (probes * d).
    const size_t h = static_cast<size_t>(static_cast<int64_t>(i) / (probes * d) / group);
    sums.err[h] += (static_cast<double>(got[i]) - ref[i]) * (static_cast<double>(got[i]) - ref[i]);
    sums.norm[h] += static_cast<double>(ref[i]) * ref[i];
  }
  return sums;
}

// s of `tuple` computed independently (IndependentHeadSums pooled over heads).
double IndependentS(const LayerTensors& x, int64_t probes, const CompressionTuple& tuple) {
  const HeadSums sums = IndependentHeadSums(x, probes, tuple);
  double err = 0, norm = 0;
  for (size_t h = 0; h < sums.err.size(); ++h) {
    err += sums.err[h];
    norm += sums.norm[h];
  }
  return err / norm;
}

CalibrationOptions SmallGrid(int64_t probes) {
  CalibrationOptions o;
  o.tuples = TupleGrid{{1.0, 0.5, 0.25}, {16, 8, 4, 2}, {16, 4, 2}}.Tuples();
  o.probe_tokens = probes;
  o.backend = Backend::kReference;
  return o;
}

size_t IndexOf(const CalibrationOptions& o, const CompressionTuple& t) {
  for (size_t i = 0; i < o.tuples.size(); ++i)
    if (o.tuples[i] == t) return i;
  ADD_FAILURE() << "tuple " << ToString(t) << " not in grid";
  return 0;
}

TEST(CalibratorTest, MatchesIndependentKernelPathAndReferenceIsExactlyZero) {
  for (int64_t d : {64, 128}) {
    RandomLayer layer(4, 2, 333, d, static_cast<uint32_t>(d));
    CalibrationOptions o = SmallGrid(64);
    auto s = MeasureLayer(layer.x, o);
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_EQ(s->size(), o.tuples.size());
    EXPECT_EQ((*s)[IndexOf(o, {1.0, 16, 16})], 0.0);
    for (size_t i = 0; i < o.tuples.size(); ++i) {
      const double want = IndependentS(layer.x, 64, o.tuples[i]);
      EXPECT_NEAR((*s)[i], want, 2e-3 * want + 1e-7) << ToString(o.tuples[i]) << " D=" << d;
    }
  }
}

TEST(CalibratorTest, ErrorFallsAsBitsAndKeepRiseAlongEachAxis) {
  RandomLayer layer(4, 2, 400, 64, 11);
  CalibrationOptions o = SmallGrid(64);
  auto s = MeasureLayer(layer.x, o);
  ASSERT_TRUE(s.ok()) << s.status();
  auto at = [&](double keep, int kb, int vb) { return (*s)[IndexOf(o, {keep, kb, vb})]; };
  EXPECT_GT(at(1, 2, 16), at(1, 4, 16));
  EXPECT_GT(at(1, 4, 16), at(1, 8, 16));
  EXPECT_GT(at(1, 8, 16), 0.0);
  EXPECT_GT(at(1, 16, 2), at(1, 16, 4));
  EXPECT_GT(at(1, 16, 4), 0.0);
  EXPECT_GT(at(0.25, 16, 16), at(0.5, 16, 16));
  EXPECT_GT(at(0.5, 16, 16), 0.0);
}

TEST(CalibratorTest, RejectsBadOptionsAndShortSequences) {
  RandomLayer layer(4, 2, 100, 64, 1);
  CalibrationOptions o = SmallGrid(64);
  o.tuples = {{0.5, 4, 4}};
  EXPECT_EQ(MeasureLayer(layer.x, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = SmallGrid(100);
  EXPECT_EQ(MeasureLayer(layer.x, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = SmallGrid(64);
  o.tuples.push_back({1.5, 16, 16});
  EXPECT_EQ(MeasureLayer(layer.x, o).status().code(), absl::StatusCode::kInvalidArgument);
}

// Every query head given head 0's q and every KV head KV head 0's k/v: each
// head group is a copy of the first, so each head's s is the layer's s.
TEST(CalibratorTest, PerHeadOfIdenticalHeadsEqualsPerLayer) {
  const int64_t heads = 6, kv_heads = 3, n = 400, d = 64;
  RandomLayer layer(heads, kv_heads, n, d, 21);
  for (int64_t h = 1; h < heads; ++h)
    std::copy_n(layer.q.begin(), n * d, layer.q.begin() + h * n * d);
  for (int64_t h = 1; h < kv_heads; ++h) {
    std::copy_n(layer.k.begin(), n * d, layer.k.begin() + h * n * d);
    std::copy_n(layer.v.begin(), n * d, layer.v.begin() + h * n * d);
  }
  CalibrationOptions o = SmallGrid(64);
  std::vector<std::vector<double>> per_head;
  auto s = MeasureLayer(layer.x, o, &per_head);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(per_head.size(), static_cast<size_t>(kv_heads));
  for (int64_t h = 0; h < kv_heads; ++h) {
    ASSERT_EQ(per_head[h].size(), o.tuples.size());
    for (size_t t = 0; t < o.tuples.size(); ++t) {
      EXPECT_NEAR(per_head[h][t], (*s)[t], 1e-12 * (*s)[t]) << "KV head " << h << " " << ToString(o.tuples[t]);
    }
  }
  EXPECT_GT((*s)[IndexOf(o, {0.25, 2, 2})], 0.0);
}

// Two KV heads with different sensitivities and norms (KV head 1: sharper
// keys, values scaled by 3). Each head's s matches the independent path for
// its own group, and the layer's s is the pooled ratio (err_0 + err_1) /
// (norm_0 + norm_1) with the norms from the independent path, which is not
// the mean of the heads' s.
TEST(CalibratorTest, PerHeadMatchesIndependentPathAndLayerIsThePooledRatio) {
  const int64_t heads = 4, kv_heads = 2, n = 333, d = 64, probes = 64;
  RandomLayer layer(heads, kv_heads, n, d, 7);
  for (int64_t i = n * d; i < 2 * n * d; ++i) {
    layer.k[i] *= 1.6f;
    layer.v[i] *= 3.0f;
  }
  CalibrationOptions o = SmallGrid(probes);
  std::vector<std::vector<double>> per_head;
  auto s = MeasureLayer(layer.x, o, &per_head);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(per_head.size(), 2u);
  ASSERT_EQ(per_head[0].size(), o.tuples.size());
  ASSERT_EQ(per_head[1].size(), o.tuples.size());
  double most_apart = 0;  // the heads' s must differ for this test to tell them apart
  for (size_t t = 0; t < o.tuples.size(); ++t) {
    const HeadSums want = IndependentHeadSums(layer.x, probes, o.tuples[t]);
    ASSERT_GT(want.norm[1], 4 * want.norm[0]);
    for (size_t h = 0; h < 2; ++h) {
      const double head_s = want.err[h] / want.norm[h];
      EXPECT_NEAR(per_head[h][t], head_s, 2e-3 * head_s + 1e-7) << "KV head " << h << " " << ToString(o.tuples[t]);
    }
    // err_h = s_h * norm_h: the pooled identity with independently computed norms.
    const double pooled = (per_head[0][t] * want.norm[0] + per_head[1][t] * want.norm[1]) /
                          (want.norm[0] + want.norm[1]);
    EXPECT_NEAR((*s)[t], pooled, 1e-5 * pooled + 1e-12) << ToString(o.tuples[t]);
    if (per_head[0][t] > 0) most_apart = std::max(most_apart, std::fabs(per_head[1][t] / per_head[0][t] - 1));
  }
  EXPECT_GT(most_apart, 0.1);
  EXPECT_EQ(per_head[0][IndexOf(o, {1.0, 16, 16})], 0.0);
  EXPECT_EQ(per_head[1][IndexOf(o, {1.0, 16, 16})], 0.0);
}

// Asking for per_head changes nothing in the layer's s, and it replaces
// whatever the vector held.
TEST(CalibratorTest, PerHeadIsOptionalAndLeavesTheLayerValueUnchanged) {
  RandomLayer layer(4, 2, 300, 64, 3);
  CalibrationOptions o = SmallGrid(64);
  auto without = MeasureLayer(layer.x, o);
  std::vector<std::vector<double>> per_head(5, std::vector<double>(1, -1.0));
  auto with = MeasureLayer(layer.x, o, &per_head);
  ASSERT_TRUE(without.ok() && with.ok()) << without.status() << " " << with.status();
  EXPECT_EQ(*without, *with);
  ASSERT_EQ(per_head.size(), 2u);
  for (const std::vector<double>& row : per_head) {
    ASSERT_EQ(row.size(), o.tuples.size());
    for (double v : row) EXPECT_GE(v, 0.0);
  }
  auto null_explicit = MeasureLayer(layer.x, o, nullptr);
  ASSERT_TRUE(null_explicit.ok()) << null_explicit.status();
  EXPECT_EQ(*null_explicit, *without);
}

TEST(CalibratorTest, CalibrateLayersAveragesSequences) {
  auto model = Model::Load(std::string(MOEND_SOURCE_DIR) + "/models/tinycode");
  ASSERT_TRUE(model.ok()) << model.status();
  auto seqs = LoadCalibrationSequences(std::string(MOEND_SOURCE_DIR) + "/data/calibration.bin",
                                       256, 0, 2);
  ASSERT_TRUE(seqs.ok()) << seqs.status();
  CalibrationOptions o = SmallGrid(64);
  auto both = CalibrateLayers(**model, *seqs, 3, 5, o);
  auto first = CalibrateLayers(**model, std::span(seqs->data(), 1), 3, 5, o);
  auto second = CalibrateLayers(**model, std::span(seqs->data() + 1, 1), 3, 5, o);
  ASSERT_TRUE(both.ok() && first.ok() && second.ok()) << both.status();
  ASSERT_EQ(both->size(), 2u);
  for (size_t l = 0; l < 2; ++l) {
    for (size_t t = 0; t < o.tuples.size(); ++t) {
      EXPECT_DOUBLE_EQ((*both)[l][t], ((*first)[l][t] + (*second)[l][t]) / 2);
    }
  }
  EXPECT_FALSE(CalibrateLayers(**model, *seqs, 5, 13, o).ok());
}

// CalibrateLayers' per-head output is the mean over sequences of MeasureLayer's
// per-head values on each sequence's forward activations; asking for it leaves
// the per-layer means unchanged.
TEST(CalibratorTest, CalibrateLayersPerHeadIsTheMeanOfPerSequenceMeasureLayer) {
  auto model = Model::Load(std::string(MOEND_SOURCE_DIR) + "/models/tinycode");
  ASSERT_TRUE(model.ok()) << model.status();
  auto seqs = LoadCalibrationSequences(std::string(MOEND_SOURCE_DIR) + "/data/calibration.bin",
                                       256, 0, 2);
  ASSERT_TRUE(seqs.ok()) << seqs.status();
  const ModelConfig& cfg = (*model)->config();
  ASSERT_EQ(cfg.num_kv_heads, 2);
  CalibrationOptions o = SmallGrid(64);
  const int64_t begin = 3, end = 5;
  std::vector<std::vector<std::vector<double>>> per_head;
  auto both = CalibrateLayers(**model, *seqs, begin, end, o, nullptr, &per_head);
  ASSERT_TRUE(both.ok()) << both.status();
  auto plain = CalibrateLayers(**model, *seqs, begin, end, o);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(*both, *plain);

  // want[l][h][t]: sum over sequences of MeasureLayer's per-head values.
  std::vector<std::vector<std::vector<double>>> want(
      end - begin, std::vector<std::vector<double>>(cfg.num_kv_heads, std::vector<double>(o.tuples.size(), 0.0)));
  for (const std::vector<int32_t>& seq : *seqs) {
    auto forward = (*model)->Forward(seq, [&](const LayerActivations& a) {
      if (a.layer < begin || a.layer >= end) return;
      const LayerTensors x{a.q, a.k, a.v, cfg.num_heads, cfg.num_kv_heads, a.tokens, cfg.head_dim};
      std::vector<std::vector<double>> heads;
      auto s = MeasureLayer(x, o, &heads);
      ASSERT_TRUE(s.ok()) << s.status();
      ASSERT_EQ(heads.size(), static_cast<size_t>(cfg.num_kv_heads));
      for (int64_t h = 0; h < cfg.num_kv_heads; ++h)
        for (size_t t = 0; t < o.tuples.size(); ++t) want[a.layer - begin][h][t] += heads[h][t];
    });
    ASSERT_TRUE(forward.ok()) << forward.status();
  }
  ASSERT_EQ(per_head.size(), static_cast<size_t>(end - begin));
  for (int64_t l = 0; l < end - begin; ++l) {
    ASSERT_EQ(per_head[l].size(), static_cast<size_t>(cfg.num_kv_heads));
    for (int64_t h = 0; h < cfg.num_kv_heads; ++h) {
      ASSERT_EQ(per_head[l][h].size(), o.tuples.size());
      for (size_t t = 0; t < o.tuples.size(); ++t) {
        EXPECT_DOUBLE_EQ(per_head[l][h][t], want[l][h][t] / 2)
            << "layer " << begin + l << " KV head " << h << " " << ToString(o.tuples[t]);
      }
    }
  }
}

TEST(CalibratorTest, LoadCalibrationSequencesNamesWhatTheFileHolds) {
  const std::string path = std::string(MOEND_SOURCE_DIR) + "/data/calibration.bin";
  auto all = LoadCalibrationSequences(path, 4096, 0, -1);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), 16u);
  auto too_many = LoadCalibrationSequences(path, 4096, 0, 17);
  EXPECT_EQ(too_many.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(too_many.status().message().find("holds 16 sequences"), std::string::npos);
}

TEST(CalibratorTest, LoadCalibrationSequencesReadsTokenIdFilesAndChecksTheVocabulary) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("calibration_ids_" + std::to_string(::getpid()) + ".bin"))
          .string();
  // 3 sequences of 4 ids and 2 spare ids; id 152064 sits in sequence 2.
  const std::vector<int32_t> ids = {0, 300, 152063, 7, 1, 2, 3, 4, 9, 152064, 8, 8, 5, 5};
  ASSERT_TRUE(WriteFileAtomic(path, EncodeTokenFile(ids)).ok());
  auto first_two = LoadCalibrationSequences(path, 4, 0, 2, 152064);
  ASSERT_TRUE(first_two.ok()) << first_two.status();
  EXPECT_EQ(*first_two, (std::vector<std::vector<int32_t>>{{0, 300, 152063, 7}, {1, 2, 3, 4}}));
  auto all = LoadCalibrationSequences(path, 4, 0, -1, 0);  // vocabulary unchecked
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), 3u);
  auto bad = LoadCalibrationSequences(path, 4, 1, 3, 152064);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find(path + ", sequence 2: token id 152064 at position 1 is outside"),
            std::string::npos)
      << bad.status();
  auto too_many = LoadCalibrationSequences(path, 4, 0, 4, 152064);
  EXPECT_EQ(too_many.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(too_many.status().message().find("holds 3 sequences of 4 tokens"), std::string::npos)
      << too_many.status();
  // A byte file checked against a vocabulary smaller than 256.
  ASSERT_TRUE(WriteFileAtomic(path, std::string("ab\xc8" "d", 4)).ok());
  auto bytes = LoadCalibrationSequences(path, 2, 0, -1, 200);
  EXPECT_EQ(bytes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bytes.status().message().find("sequence 1: token id 200 at position 0"), std::string::npos)
      << bytes.status();
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace moend::worker

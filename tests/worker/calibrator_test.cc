#include "worker/calibrator.h"

#include <gtest/gtest.h>
#include <unistd.h>

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

// s of `tuple` computed independently through the kernels' reference
// CompressLayer + ProbeAttention (double-precision online softmax).
double IndependentS(const LayerTensors& x, int64_t probes, const CompressionTuple& tuple) {
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
  double err = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    err += (static_cast<double>(got[i]) - ref[i]) * (static_cast<double>(got[i]) - ref[i]);
    norm += static_cast<double>(ref[i]) * ref[i];
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

#include "services/registry/merge.h"

#include "gtest/gtest.h"
#include "services/registry/model_config.h"
#include "tests/registry/registry_test_util.h"

namespace moend::registry {
namespace {

using testing::ExpectedTable;
using testing::ShardRows;
using testing::SmallTuples;

ModelShape Shape(int64_t layers) {
  ModelShape s;
  s.num_layers = layers;
  s.num_attention_heads = 4;
  s.num_kv_heads = 2;
  s.head_dim = 64;
  return s;
}

JobSpec Spec(int64_t samples) {
  JobSpec spec;
  spec.model = "m";
  spec.tuples = SmallTuples();
  spec.seq_len = 4096;
  spec.compression_point = 3840;
  spec.num_samples = samples;
  return spec;
}

// Shards over sample ranges `cuts` x layer ranges `layer_cuts`, each with the
// mean of its own samples, as workers would report them.
std::vector<ShardResult> Parts(const std::vector<int64_t>& cuts,
                               const std::vector<int64_t>& layer_cuts) {
  std::vector<ShardResult> parts;
  for (size_t a = 0; a + 1 < cuts.size(); ++a) {
    for (size_t b = 0; b + 1 < layer_cuts.size(); ++b) {
      Shard shard;
      shard.sample_begin = cuts[a];
      shard.sample_end = cuts[a + 1];
      shard.layer_begin = layer_cuts[b];
      shard.layer_end = layer_cuts[b + 1];
      ShardResult r;
      r.sample_begin = shard.sample_begin;
      r.sample_end = shard.sample_end;
      r.table.layer_begin = shard.layer_begin;
      r.table.layer_end = shard.layer_end;
      r.table.samples = shard.samples();
      r.table.tuples = SmallTuples();
      r.table.s = ShardRows(shard, SmallTuples().size());
      parts.push_back(r);
    }
  }
  return parts;
}

TEST(MergeTest, UnequalSampleRangesGiveTheMeanOverAllSamples) {
  // 16 samples in ranges of 5, 5, 5, 1: an unweighted mean of the shard means
  // would be wrong here.
  auto parts = Parts({0, 5, 10, 15, 16}, {0, 5, 10, 12});
  auto merged = MergePartialTables(Spec(16), Shape(12), parts);
  ASSERT_TRUE(merged.ok()) << merged.status();
  auto expected = ExpectedTable(12, 16, SmallTuples().size());
  ASSERT_EQ(merged->s.size(), 12u);
  for (int l = 0; l < 12; ++l) {
    for (size_t t = 0; t < SmallTuples().size(); ++t) {
      EXPECT_NEAR(merged->s[l][t], expected[l][t], 1e-12) << "layer " << l << " tuple " << t;
    }
  }
  EXPECT_EQ(merged->samples, 16);
  EXPECT_EQ(merged->num_kv_heads, 2);
  EXPECT_EQ(merged->head_dim, 64);
  EXPECT_EQ(merged->compression_point, 3840);
  EXPECT_EQ(merged->tuples, SmallTuples());
  EXPECT_TRUE(merged->Validate().ok());

  // Sanity of the test itself: the unweighted mean differs.
  double unweighted = 0;
  for (int a = 0; a < 4; ++a) unweighted += parts[a * 3].table.s[0][1] / 4;
  EXPECT_GT(std::abs(unweighted - expected[0][1]), 1e-6);
}

TEST(MergeTest, OrderOfPartsDoesNotMatter) {
  auto parts = Parts({0, 3, 8}, {0, 7, 12});
  auto a = MergePartialTables(Spec(8), Shape(12), parts);
  std::reverse(parts.begin(), parts.end());
  auto b = MergePartialTables(Spec(8), Shape(12), parts);
  ASSERT_TRUE(a.ok() && b.ok());
  for (int l = 0; l < 12; ++l) {
    for (int t = 0; t < 3; ++t) EXPECT_NEAR(a->s[l][t], b->s[l][t], 1e-12);
  }
}

TEST(MergeTest, PerHeadRowsMergeLikeRowsWhenEveryPartHasThem) {
  auto parts = Parts({0, 5, 10, 15, 16}, {0, 5, 10, 12});
  for (ShardResult& p : parts) p.table.s_head = testing::HeadRows(p.table.s, 2);
  auto merged = MergePartialTables(Spec(16), Shape(12), parts);
  ASSERT_TRUE(merged.ok()) << merged.status();
  ASSERT_TRUE(merged->has_heads());
  auto expected = ExpectedTable(12, 16, SmallTuples().size());
  for (int l = 0; l < 12; ++l) {
    ASSERT_EQ(merged->s_head[l].size(), 2u);
    for (int h = 0; h < 2; ++h) {
      for (size_t t = 0; t < SmallTuples().size(); ++t) {
        EXPECT_NEAR(merged->s_head[l][h][t], expected[l][t] * (h + 1), 1e-12)
            << "layer " << l << " head " << h << " tuple " << t;
      }
    }
  }

  // One part without head rows (a worker that measures layers only): the
  // merged table has no s_head, and its s is unchanged.
  parts[4].table.s_head.clear();
  auto mixed = MergePartialTables(Spec(16), Shape(12), parts);
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  EXPECT_FALSE(mixed->has_heads());
  EXPECT_EQ(mixed->s, merged->s);

  // Head rows for the wrong number of KV heads.
  for (ShardResult& p : parts) p.table.s_head = testing::HeadRows(p.table.s, 3);
  auto wrong = MergePartialTables(Spec(16), Shape(12), parts);
  EXPECT_TRUE(absl::IsInvalidArgument(wrong.status())) << wrong.status();
}

TEST(MergeTest, MissingSamplesAreAnError) {
  auto parts = Parts({0, 5, 10, 16}, {0, 12});
  parts.erase(parts.begin() + 1);  // samples [5, 10) never reported
  auto merged = MergePartialTables(Spec(16), Shape(12), parts);
  ASSERT_TRUE(absl::IsInvalidArgument(merged.status()));
  EXPECT_NE(merged.status().message().find("missing"), std::string::npos) << merged.status();
}

TEST(MergeTest, MissingLayersAreAnError) {
  auto parts = Parts({0, 16}, {0, 6, 12});
  parts.pop_back();
  auto merged = MergePartialTables(Spec(16), Shape(12), parts);
  ASSERT_TRUE(absl::IsInvalidArgument(merged.status()));
  EXPECT_NE(merged.status().message().find("layer 6"), std::string::npos) << merged.status();
}

TEST(MergeTest, OverlappingSamplesAreAnError) {
  auto parts = Parts({0, 8, 16}, {0, 12});
  parts.push_back(parts[0]);
  auto merged = MergePartialTables(Spec(16), Shape(12), parts);
  ASSERT_TRUE(absl::IsInvalidArgument(merged.status()));
  EXPECT_NE(merged.status().message().find("overlap"), std::string::npos) << merged.status();
}

TEST(MergeTest, TupleMismatchIsAnError) {
  auto parts = Parts({0, 16}, {0, 12});
  parts[0].table.tuples[1].kbits = 4;
  EXPECT_TRUE(absl::IsInvalidArgument(MergePartialTables(Spec(16), Shape(12), parts).status()));
}

TEST(ModelConfigTest, ReadsTheShippedModel) {
  auto shape = ModelShapeFromConfigJson(testing::TinyConfig());
  ASSERT_TRUE(shape.ok()) << shape.status();
  EXPECT_EQ(shape->num_layers, 12);
  EXPECT_EQ(shape->num_attention_heads, 4);
  EXPECT_EQ(shape->num_kv_heads, 2);
  EXPECT_EQ(shape->head_dim, 64);
  EXPECT_EQ(shape->hidden_size, 256);
  EXPECT_EQ(shape->vocab_size, 256);
  EXPECT_EQ(shape->max_position_embeddings, 4096);
  EXPECT_EQ(shape->architecture, "LlamaForCausalLM");
  EXPECT_EQ(shape->model_type, "llama");
}

TEST(ModelConfigTest, DefaultsKvHeadsAndHeadDim) {
  auto shape = ModelShapeFromConfigJson(
      R"({"num_hidden_layers": 28, "num_attention_heads": 28, "hidden_size": 3584})");
  ASSERT_TRUE(shape.ok()) << shape.status();
  EXPECT_EQ(shape->num_kv_heads, 28);
  EXPECT_EQ(shape->head_dim, 128);
}

TEST(ModelConfigTest, RejectsMissingOrBadFields) {
  auto missing = ModelShapeFromConfigJson(R"({"num_attention_heads": 4})");
  ASSERT_TRUE(absl::IsInvalidArgument(missing.status()));
  EXPECT_NE(missing.status().message().find("num_hidden_layers"), std::string::npos);
  auto bad_kv = ModelShapeFromConfigJson(
      R"({"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 3, "head_dim": 64})");
  EXPECT_TRUE(absl::IsInvalidArgument(bad_kv.status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ModelShapeFromConfigJson("not json").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      ModelShapeFromConfigJson(R"({"num_hidden_layers": 2, "num_attention_heads": 4})").status()))
      << "no head_dim and no hidden_size";
}

}  // namespace
}  // namespace moend::registry

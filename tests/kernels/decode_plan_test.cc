// The host half of the CUDA decode plan (kernels/cuda/decode_plan.h): split
// counts, launches and workspace sizes are pure functions of the batch shape,
// checked here without a GPU. Invariants: every (sequence, KV head) is in
// exactly one launch, every unit of every head is walked by exactly one
// split, and the workspace holds every slot the kernel writes.
#include "kernels/cuda/decode_plan.h"

#include <algorithm>
#include <random>
#include <vector>

#include "core/compression.h"
#include "gtest/gtest.h"
#include "kernels/compressed_cache.h"
#include "kernels/kv_compress.h"
#include "tests/kernels/brute_force.h"

namespace moend::kernels::cuda {
namespace {

DecodeSequenceShape Seq(const LayerFormat& f, int64_t kept, int64_t window, int64_t appended) {
  return {f, {kept}, window, appended};
}

TEST(DecodePlanTest, SplitsForFollowsTheFormula) {
  SplitPolicy h100;  // 132 SMs, about 8 blocks per SM
  // batch 8, 32 query heads over 8 KV heads: 64 blocks per split; ceil(8 * 132 / 64) = 17.
  EXPECT_EQ(SplitsFor(8, 32, 8, 1000, h100), 17);
  // ...at most max_units / 4 splits (each split walks >= 4 units), at least 1.
  EXPECT_EQ(SplitsFor(8, 32, 8, 20, h100), 5);
  EXPECT_EQ(SplitsFor(8, 32, 8, 3, h100), 1);
  // Groups of more than 8 query heads take several blocks per KV head: a
  // group of 10 is 2 blocks, so 4 per split; ceil(8 * 132 / 4) = 264.
  EXPECT_EQ(SplitsFor(1, 20, 2, 10000, h100), 264);
  SplitPolicy a100 = h100;
  a100.sm_count = 108;
  EXPECT_EQ(SplitsFor(8, 32, 8, 1000, a100), (8 * 108 + 63) / 64);
  SplitPolicy waves = h100;
  waves.waves = 1;  // one wave of 3 blocks per SM, rounded down
  EXPECT_EQ(SplitsFor(8, 32, 8, 1000, waves), 3 * 132 / 64);
  EXPECT_EQ(SplitsFor(1000, 32, 8, 1000, waves), 1);
}

TEST(DecodePlanTest, HeadUnitsCountGroupsWindowAndResidual) {
  EXPECT_EQ(DecodeHeadUnits(37, 32, 0), 2 + 1);
  EXPECT_EQ(DecodeHeadUnits(37, 32, 1), 2 + 1 + 1);
  EXPECT_EQ(DecodeHeadUnits(37, 32, 31), 2 + 1 + 1);
  EXPECT_EQ(DecodeHeadUnits(37, 32, 32), 2 + 1 + 1);      // flushed: one group, empty residual
  EXPECT_EQ(DecodeHeadUnits(37, 32, 33), 2 + 1 + 1 + 1);
  EXPECT_EQ(DecodeHeadUnits(0, 5, 0), 1);
  EXPECT_EQ(DecodeHeadUnits(0, 0, 0), 0);
  for (int64_t a = 0; a < 100; ++a) EXPECT_LE(DecodeHeadUnits(64, 32, a), DecodeHeadUnits(64, 32, a + 1));
}

// DecodeHeadUnits agrees with the units the kernel counts (AttentionUnits of
// the head's view) on a host layer that had tokens appended across flushes.
TEST(DecodePlanTest, HeadUnitsMatchAHostLayerAfterAppends) {
  const int64_t hq = 4, hkv = 2, d = 64, n = 400, c = 300;
  const testing::Activations a = testing::RandomActivations(hq, hkv, n, d, 7);
  const LayerTensors x{a.q.data(), a.k.data(), a.v.data(), hq, hkv, n, d};
  auto layer = CompressLayer(x, c, CompressionTuple{0.4, 4, 2}, Backend::kReference);
  ASSERT_TRUE(layer.ok()) << layer.status();
  for (int64_t t = 0; t < 70; ++t) {
    for (int64_t h = 0; h < hkv; ++h) {
      const CompressedHead& hd = layer->head(h);
      HeadCacheView v;
      v.initial_kept = static_cast<int32_t>(hd.initial_kept);
      v.n_quant = static_cast<int32_t>(hd.quantized);
      v.n_window = static_cast<int32_t>(layer->window_tokens());
      v.n_residual = static_cast<int32_t>(layer->residual_tokens());
      EXPECT_EQ(AttentionUnits(v, 0),
                DecodeHeadUnits(hd.initial_kept, layer->window_tokens(), layer->appended_tokens()))
          << "after " << t << " appended tokens, head " << h;
    }
    ASSERT_TRUE(layer->Append(a.k.data() + (c + t) * d, a.v.data() + (c + t) * d, 1, n).ok());
  }
}

// Every invariant the launch path relies on, for one schedule.
void ExpectConsistent(const DecodeBatchShape& shape, const DecodeSchedule& s) {
  const int64_t items = static_cast<int64_t>(shape.sequences.size());
  const int64_t hkv = shape.sequences[0].format.num_kv_heads, d = shape.sequences[0].format.head_dim;
  const int64_t group = shape.num_heads / hkv;
  ASSERT_EQ(s.items, items);
  ASSERT_EQ(s.table_entries, items * hkv);
  std::vector<int> covered(items * hkv, 0);
  int64_t offset = 0;
  for (const DecodeLaunch& l : s.launches) {
    ASSERT_LT(l.item_begin, l.item_end);
    ASSERT_LT(l.kv_begin, l.kv_end);
    EXPECT_EQ(l.table_offset, offset);
    offset += (l.item_end - l.item_begin) * (l.kv_end - l.kv_begin);
    ASSERT_GE(l.splits, 1);
    EXPECT_LE(l.splits, std::max(1, l.max_units / kAttentionWarps));
    const int64_t launch_items = l.item_end - l.item_begin, heads = (l.kv_end - l.kv_begin) * group;
    // The kernel's highest slot: part_ml[2 * slot + 1] after the o partials.
    const int64_t slots = launch_items * heads * l.splits;
    EXPECT_GE(s.workspace_floats, slots * d + 2 * slots) << "workspace too small for a launch";
    for (int64_t i = l.item_begin; i < l.item_end; ++i) {
      const DecodeSequenceShape& seq = shape.sequences[i];
      for (int64_t h = l.kv_begin; h < l.kv_end; ++h) {
        ++covered[i * hkv + h];
        EXPECT_EQ(seq.format.KBits(h), l.kbits);
        EXPECT_EQ(seq.format.VBits(h), l.vbits);
        const int64_t kept = seq.initial_kept.size() == 1 ? seq.initial_kept[0] : seq.initial_kept[h];
        // Every length the cache passes through on its way to the capacity.
        for (int64_t a : {int64_t{0}, seq.appended / 2, seq.appended}) {
          const int units = static_cast<int>(DecodeHeadUnits(kept, seq.window, a) + shape.tail_units);
          ASSERT_LE(units, l.max_units);
          std::vector<int> walked(units, 0);
          for (int split = 0; split < l.splits; ++split) {
            const UnitRange r = SplitUnitRange(units, l.max_units, l.splits, split);
            for (int u = std::max(0, r.begin); u < r.end; ++u) ++walked[u];
          }
          for (int u = 0; u < units; ++u) ASSERT_EQ(walked[u], 1) << "unit " << u << " of " << units;
        }
      }
    }
  }
  for (int64_t e = 0; e < items * hkv; ++e) EXPECT_EQ(covered[e], 1) << "table entry " << e;
}

TEST(DecodePlanTest, UniformBatchIsOneLaunch) {
  DecodeBatchShape shape;
  shape.num_heads = 32;
  const LayerFormat f(8, 128, 4, 2);
  for (int64_t kept : {100, 2000, 37, 4096}) shape.sequences.push_back(Seq(f, kept, 32, 64));
  auto s = ScheduleDecode(shape, SplitPolicy{});
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->launches.size(), 1u);
  const DecodeLaunch& l = s->launches[0];
  EXPECT_EQ(l.max_units, DecodeHeadUnits(4096, 32, 64));
  EXPECT_EQ(l.splits, SplitsFor(4, 32, 8, l.max_units, SplitPolicy{}));
  EXPECT_EQ(s->workspace_floats, int64_t{4} * 32 * l.splits * (128 + 2));
  ExpectConsistent(shape, *s);
}

TEST(DecodePlanTest, PerHeadBitsTakeOneLaunchPerRun) {
  DecodeBatchShape shape;
  shape.num_heads = 28;
  const LayerFormat f = LayerFormat::PerHead(128, {4, 8, 8, 2}, {2, 16, 16, 2});
  shape.sequences.push_back({f, {600, 17, 333, 5}, 32, 40});
  shape.sequences.push_back({f, {10}, 10, 0});
  auto s = ScheduleDecode(shape, SplitPolicy{});
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->launches.size(), 3u);  // heads [0,1) 4/2, [1,3) 8/16, [3,4) 2/2
  EXPECT_EQ(s->launches[1].kv_begin, 1);
  EXPECT_EQ(s->launches[1].kv_end, 3);
  EXPECT_EQ(s->launches[1].kbits, 8);
  EXPECT_EQ(s->launches[1].vbits, 16);
  EXPECT_EQ(s->launches[0].max_units, DecodeHeadUnits(600, 32, 40));
  EXPECT_EQ(s->launches[2].max_units, DecodeHeadUnits(5, 32, 40));
  ExpectConsistent(shape, *s);
}

TEST(DecodePlanTest, SequencesWithOtherBitsTakeTheirOwnLaunches) {
  DecodeBatchShape shape;
  shape.num_heads = 8;
  const LayerFormat a(2, 64, 4, 2), b(2, 64, 8, 8);
  shape.sequences = {Seq(a, 100, 32, 3), Seq(a, 900, 32, 3), Seq(b, 50, 20, 0), Seq(a, 5, 5, 40)};
  auto s = ScheduleDecode(shape, SplitPolicy{});
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->launches.size(), 3u);  // items [0,2) a, [2,3) b, [3,4) a
  EXPECT_EQ(s->launches[0].item_end, 2);
  EXPECT_EQ(s->launches[1].kbits, 8);
  EXPECT_EQ(s->launches[2].item_begin, 3);
  ExpectConsistent(shape, *s);
}

TEST(DecodePlanTest, RandomShapesKeepEveryInvariant) {
  std::mt19937 rng(11);
  const int bits[] = {2, 4, 8, 16};
  for (int trial = 0; trial < 200; ++trial) {
    DecodeBatchShape shape;
    const int64_t hkv = 1 + rng() % 4, group = 1 + rng() % 12, d = rng() % 2 ? 64 : 128;
    shape.num_heads = hkv * group;
    shape.tail_units = trial % 5 == 0 ? rng() % 9 : 0;
    const int items = 1 + rng() % 9;
    std::vector<LayerFormat> formats;
    for (int f = 0; f < 2; ++f) {
      std::vector<int> kb(hkv), vb(hkv);
      for (int64_t h = 0; h < hkv; ++h) {
        kb[h] = bits[rng() % 4];
        vb[h] = bits[rng() % 4];
      }
      formats.push_back(LayerFormat::PerHead(d, kb, vb));
    }
    for (int i = 0; i < items; ++i) {
      DecodeSequenceShape seq;
      seq.format = formats[rng() % 2];
      const int64_t counts = rng() % 2 ? hkv : 1;  // per head, or one for all
      for (int64_t h = 0; h < counts; ++h) seq.initial_kept.push_back(rng() % 3000);
      seq.window = rng() % 33;
      seq.appended = rng() % 200;
      shape.sequences.push_back(seq);
    }
    SplitPolicy policy;
    policy.sm_count = 1 + rng() % 160;
    policy.waves = rng() % 3;
    auto s = ScheduleDecode(shape, policy);
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_NO_FATAL_FAILURE(ExpectConsistent(shape, *s)) << "trial " << trial;
  }
}

TEST(DecodePlanTest, RejectsMalformedBatches) {
  const LayerFormat f(2, 64, 4, 4);
  DecodeBatchShape empty;
  empty.num_heads = 4;
  EXPECT_EQ(ScheduleDecode(empty, SplitPolicy{}).status().code(), absl::StatusCode::kInvalidArgument);
  DecodeBatchShape heads;
  heads.num_heads = 3;
  heads.sequences = {Seq(f, 10, 10, 0)};
  EXPECT_EQ(ScheduleDecode(heads, SplitPolicy{}).status().code(), absl::StatusCode::kInvalidArgument);
  DecodeBatchShape kv;
  kv.num_heads = 4;
  kv.sequences = {Seq(f, 10, 10, 0), Seq(LayerFormat(4, 64, 4, 4), 10, 10, 0)};
  EXPECT_EQ(ScheduleDecode(kv, SplitPolicy{}).status().code(), absl::StatusCode::kInvalidArgument);
  DecodeBatchShape kept;
  kept.num_heads = 4;
  kept.sequences = {{f, {1, 2, 3}, 10, 0}};
  EXPECT_EQ(ScheduleDecode(kept, SplitPolicy{}).status().code(), absl::StatusCode::kInvalidArgument);
  DecodeBatchShape negative;
  negative.num_heads = 4;
  negative.sequences = {Seq(f, 10, 10, -1)};
  EXPECT_EQ(ScheduleDecode(negative, SplitPolicy{}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moend::kernels::cuda

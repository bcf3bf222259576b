// The host half of the CUDA decode's plan/run split (flashinfer's plan()):
// how a batch of compressed caches of one layer is cut into attention
// launches, how many splits (split-K over units of <= 32 tokens) each takes
// and how large the workspace is. Pure functions of the batch shape and the
// device's multiprocessor count, built in every configuration (no CUDA
// headers) so that CPU tests check them (AttentionUnits and
// AttentionWorkspaceFloats of kernels/cuda/launch.h are defined with them); kernels/cuda/resident.h runs the
// plan on a device. The attention kernel (kernels/cuda/attention_kernel.cuh)
// reads a split's unit range through SplitUnitRange below.
#ifndef MOEND_KERNELS_CUDA_DECODE_PLAN_H_
#define MOEND_KERNELS_CUDA_DECODE_PLAN_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/compressed_cache.h"
#include "kernels/cuda/launch.h"

namespace moend::kernels::cuda {

// kAttentionWarps, kAttentionMaxGroup, kAttentionMaxItems, SplitPolicy,
// SplitsFor and SplitUnitRange are in kernels/cuda/launch.h (the kernels'
// side of the partition, C++17 for nvcc).

// Units of <= 32 tokens the attention kernel walks for a head with
// `initial_kept` tokens kept at compression, a window of `window` tokens and
// `appended` tokens appended since (flushed in groups of 32, the rest in the
// residual): ceil(m0/32) + floor(a/32) + ceil(w/32) + ceil((a mod 32)/32).
// Non-decreasing in `appended`.
int64_t DecodeHeadUnits(int64_t initial_kept, int64_t window, int64_t appended);

// One sequence of a decode batch, as the plan sees it.
struct DecodeSequenceShape {
  LayerFormat format;                 // the sequence's layer (bits may differ between sequences)
  std::vector<int64_t> initial_kept;  // [num_kv_heads] kept at compression, or one entry for all heads
  int64_t window = 0;                 // window tokens
  int64_t appended = 0;               // appended tokens the plan must cover (a cache's capacity)
};

struct DecodeBatchShape {
  int64_t num_heads = 0;  // query heads; a multiple of num_kv_heads
  std::vector<DecodeSequenceShape> sequences;
  int64_t tail_units = 0;  // units of an uncompressed tail every item also reads (probe mode)
};

// One attention launch: the contiguous items [item_begin, item_end), which
// share one LayerFormat, times the KV heads [kv_begin, kv_end), which share
// their bit widths. Its table of HeadCacheViews, [items, run heads], starts
// at entry table_offset of the plan's table.
struct DecodeLaunch {
  int64_t item_begin = 0, item_end = 0;
  int64_t kv_begin = 0, kv_end = 0;
  int kbits = 16, vbits = 16;
  int max_units = 1;  // the most units any of its heads holds within the shape (>= 1)
  int splits = 1;
  int64_t table_offset = 0;
};

struct DecodeSchedule {
  int64_t items = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  std::vector<LayerFormat> formats;  // [items]
  std::vector<DecodeLaunch> launches;
  int64_t table_entries = 0;     // items * num_kv_heads
  int64_t workspace_floats = 0;  // the most any launch needs (launches run one after another)
};

// The launches, splits and workspace of a batch. InvalidArgument when the
// batch is empty or larger than kAttentionMaxItems, a format is invalid,
// sequences differ in num_kv_heads or head_dim, num_heads is not a positive
// multiple of num_kv_heads, or a token count is negative or malformed.
absl::StatusOr<DecodeSchedule> ScheduleDecode(const DecodeBatchShape& shape, const SplitPolicy& policy);

}  // namespace moend::kernels::cuda

#endif  // MOEND_KERNELS_CUDA_DECODE_PLAN_H_

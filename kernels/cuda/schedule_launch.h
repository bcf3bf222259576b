// Internal to kernels/cuda: the one launch path of the attention kernel over
// a DecodeSchedule, shared by RunDecode (kernels/cuda/resident.h) and the
// host-data entry points of kernels/cuda/cuda_backend.cc. No CUDA headers.
#ifndef MOEND_KERNELS_CUDA_SCHEDULE_LAUNCH_H_
#define MOEND_KERNELS_CUDA_SCHEDULE_LAUNCH_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/cuda/decode_plan.h"
#include "kernels/cuda/launch.h"

namespace moend::kernels::cuda {

class DeviceLayerCache;

// Where the launches read q and write out (device float32): q(item, head) at
// q + item * q_item_stride + head * q_head_stride, out likewise; an optional
// fp32 tail every item reads (probe mode, AttentionParams).
struct ScheduleIo {
  const float* q = nullptr;
  int64_t q_item_stride = 0, q_head_stride = 0;
  float* out = nullptr;
  int64_t out_item_stride = 0, out_head_stride = 0;
  const float* tail_k = nullptr;  // [num_kv_heads, tail_head_stride floats]
  const float* tail_v = nullptr;
  int64_t tail_head_stride = 0;
  const int32_t* tail_len = nullptr;  // device [items] or null
};

// The host table of head views for `s` with item i reading items[i] (the
// launches' tables one after another, each [launch items, run heads]), and
// per launch the most units any of its heads holds now plus `tail_units`.
void BuildViewTable(const DecodeSchedule& s, absl::Span<const DeviceLayerCache* const> items, int tail_units,
                    std::vector<HeadCacheView>* table, std::vector<int>* max_units);

// Launches every launch of `s` on `stream` (one after another: they share
// `workspace`, s.workspace_floats floats); `table` is the device copy of
// BuildViewTable's table.
absl::Status LaunchSchedule(const DecodeSchedule& s, const HeadCacheView* table, absl::Span<const int> max_units,
                            const ScheduleIo& io, float* workspace, void* stream);

}  // namespace moend::kernels::cuda

#endif  // MOEND_KERNELS_CUDA_SCHEDULE_LAUNCH_H_

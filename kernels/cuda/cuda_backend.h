// The CUDA implementation behind the public API (host data in and out). Only
// compiled when MOEND_WITH_CUDA; no CUDA headers here. Inputs are validated by
// the public entry points before these are called.
#ifndef MOEND_KERNELS_CUDA_CUDA_BACKEND_H_
#define MOEND_KERNELS_CUDA_CUDA_BACKEND_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/attention.h"
#include "kernels/kv_compress.h"

namespace moend::kernels::cuda {

// True when a CUDA device can be used; otherwise *reason says why.
bool DeviceAvailable(std::string* reason);

absl::StatusOr<EvictionScores> ComputeEvictionScores(const LayerTensors& x, int64_t prefix_tokens);
absl::StatusOr<KeptSet> SelectKept(const EvictionScores& scores, int64_t kept);
absl::StatusOr<CompressedLayer> QuantizeKept(const LayerTensors& x, const KeptSet& kept, int kbits,
                                             int vbits);
// The attention entry points launch once per run of consecutive KV heads with
// equal bits (one launch for a uniform layer; mixed layers, DESIGN.md section
// 2 "Per-head tuples", take one per run, each over its runs' query heads).
absl::Status DecodeAttention(absl::Span<const CompressedLayer* const> caches, const float* q,
                             int64_t num_heads, float* out);
absl::Status ProbeAttention(const CompressedLayer& prefix, const ProbeQueries& probes, float* out);

}  // namespace moend::kernels::cuda

#endif  // MOEND_KERNELS_CUDA_CUDA_BACKEND_H_

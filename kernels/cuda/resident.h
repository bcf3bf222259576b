// Device-resident compressed caches and the plan/run decode (flashinfer's
// split): a DeviceLayerCache holds one layer of one sequence's compressed
// cache (DESIGN.md section 2) in device memory, allocated once at a capacity
// and grown in place by Append; PlanDecode sizes the launches, splits and
// workspace of a batch once; RunDecode attends over resident caches with no
// allocation and no upload of a cache (it copies the batch's small table of
// head views, 96 bytes per sequence and KV head, to the device on the stream).
// Only built with MOEND_WITH_CUDA; no CUDA headers here (streams travel as
// void*, device pointers as plain pointers).
#ifndef MOEND_KERNELS_CUDA_RESIDENT_H_
#define MOEND_KERNELS_CUDA_RESIDENT_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/compressed_cache.h"
#include "kernels/cuda/decode_plan.h"
#include "kernels/cuda/launch.h"

namespace moend::kernels::cuda {

// One layer of one sequence's compressed cache in device memory: the same
// buffers as kernels::CompressedLayer (quantized part, window, fp16
// residual, positions), each allocated at the capacity that
// CompressedLayer::Reserve(append_capacity) reserves, so that appending
// never moves them. Appending works as CompressedLayer::Append: the tokens go
// to the fp16 residual, and each time it holds 32 tokens they are quantized
// (on the host, with the reference quantizer: the bytes are those of the
// host layer) and written into the quantized part. Not thread-safe; the
// caller orders Append and RunDecode on one stream.
class DeviceLayerCache {
 public:
  // Uploads `host` (everything it holds, appended tokens included) into
  // device memory reserved for `append_capacity` more tokens. Synchronous.
  static absl::StatusOr<std::unique_ptr<DeviceLayerCache>> Upload(const CompressedLayer& host,
                                                                  int64_t append_capacity);
  ~DeviceLayerCache();
  DeviceLayerCache(const DeviceLayerCache&) = delete;
  DeviceLayerCache& operator=(const DeviceLayerCache&) = delete;

  const LayerFormat& format() const;
  int64_t prefix_tokens() const;
  int64_t appended_tokens() const;
  // Tokens that may be appended in all (appended_tokens() at most this).
  int64_t appended_capacity() const;
  int64_t window_tokens() const;
  int64_t residual_tokens() const;
  int64_t initial_kept(int64_t h) const;
  int64_t quantized(int64_t h) const;
  // Equal to CompressedLayer::Bytes() of the host layer holding the same tokens.
  int64_t Bytes() const;
  // Bytes of the buffers as allocated (positions included): equal to
  // ReservedLayerBytes(format, kept, window, appended_capacity()) and to the
  // host layer's CapacityBytes() after Reserve to the same capacity.
  int64_t CapacityBytes() const;

  // Appends `tokens` tokens: k, v host float32 [num_kv_heads, tokens, D],
  // head stride `head_stride` rows (0: tokens), as CompressedLayer::Append.
  // The device writes are ordered on `stream` (a cudaStream_t; null: the
  // default stream); the host arrays may be reused when it returns.
  // OutOfRange when the capacity would be exceeded (nothing is appended).
  absl::Status Append(const float* k, const float* v, int64_t tokens, int64_t head_stride = 0,
                      void* stream = nullptr);

  // The shape PlanDecode sees: the cache at its capacity.
  DecodeSequenceShape Shape() const;
  // Device view of head h as it is now (valid until the next Append).
  HeadCacheView View(int64_t h) const;

 private:
  struct Impl;
  explicit DeviceLayerCache(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The launches, splits and device workspace of a batch shape; made once per
// batch shape and reused by every RunDecode over caches of that shape (their
// lengths may grow up to the capacities the plan was made for; the splits
// stay right beyond them, only less balanced). One stream at a time.
class DecodePlan {
 public:
  DecodePlan();
  ~DecodePlan();
  DecodePlan(DecodePlan&&) noexcept;
  DecodePlan& operator=(DecodePlan&&) noexcept;

  const DecodeSchedule& schedule() const;

 private:
  struct Impl;
  friend absl::StatusOr<DecodePlan> PlanDecode(const DecodeBatchShape& shape);
  friend absl::Status RunDecode(DecodePlan& plan, absl::Span<const DeviceLayerCache* const> caches,
                                const float* q, float* out, void* stream);
  std::unique_ptr<Impl> impl_;
};

// Plans a batch: ScheduleDecode with this device's SplitPolicy, then
// allocates the workspace and the head-view table.
absl::StatusOr<DecodePlan> PlanDecode(const DecodeBatchShape& shape);
// The same for these caches at their capacities.
absl::StatusOr<DecodePlan> PlanDecode(absl::Span<const DeviceLayerCache* const> caches, int64_t num_heads);

// One decode step of a batch: out[b] = attention of q[b] over everything
// caches[b] holds (append the new token first), as kernels::DecodeAttention.
// q, out: device float32 [batch, num_heads, head_dim]. Asynchronous on
// `stream` (a cudaStream_t; null: the default stream). InvalidArgument when
// the caches do not match the plan (count, format, or a head longer than the
// kernel's int range).
absl::Status RunDecode(DecodePlan& plan, absl::Span<const DeviceLayerCache* const> caches, const float* q,
                       float* out, void* stream = nullptr);

}  // namespace moend::kernels::cuda

#endif  // MOEND_KERNELS_CUDA_RESIDENT_H_

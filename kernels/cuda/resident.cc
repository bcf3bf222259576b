// Device-resident caches and the plan/run decode (kernels/cuda/resident.h),
// and the one launch path of the attention kernel over a DecodeSchedule
// (kernels/cuda/schedule_launch.h).
#include "kernels/cuda/resident.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/compression.h"
#include "core/status_macros.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/schedule_launch.h"
#include "kernels/fp16.h"

namespace moend::kernels::cuda {
namespace {

static_assert(sizeof(HeadCacheView) == 96, "kernels/cuda/resident.h and docs/KERNELS.md quote 96 bytes per view");

// One KV head's buffers in the arena, each at its capacity.
struct HeadBuffers {
  uint8_t* k_codes = nullptr;       // [quantized capacity, krow]
  uint16_t* k_scale = nullptr;      // [key group capacity, D] (kbits < 16)
  uint16_t* k_min = nullptr;
  uint8_t* v_codes = nullptr;       // [quantized capacity, vrow]
  uint16_t* v_scale = nullptr;      // [quantized capacity, D/32] (vbits < 16)
  uint16_t* v_min = nullptr;
  uint16_t* window_k = nullptr;     // [window, D]
  uint16_t* window_v = nullptr;
  uint16_t* residual_k = nullptr;   // [residual capacity, D]
  uint16_t* residual_v = nullptr;
  int32_t* position = nullptr;      // [quantized capacity]
  int64_t initial_kept = 0;
  int64_t quantized = 0;
  int64_t key_groups = 0;
  std::vector<uint16_t> host_residual_k, host_residual_v;  // the residual, for the flush
};

}  // namespace

struct DeviceLayerCache::Impl {
  LayerFormat format;
  int64_t prefix = 0, appended = 0, capacity = 0, window = 0;
  int64_t residual = 0;           // rows in the residual
  int64_t residual_on_device = 0;  // of which already written to the device
  int64_t capacity_bytes = 0;
  std::vector<HeadBuffers> heads;
  DeviceArray arena;

  absl::Status Flush(cudaStream_t s);
  absl::Status WriteResidual(cudaStream_t s);
};

DeviceLayerCache::DeviceLayerCache(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceLayerCache::~DeviceLayerCache() = default;

absl::StatusOr<std::unique_ptr<DeviceLayerCache>> DeviceLayerCache::Upload(const CompressedLayer& host,
                                                                           int64_t append_capacity) {
  const LayerFormat& f = host.format();
  MOEND_RETURN_IF_ERROR(ValidateFormat(f));
  if (append_capacity < 0) {
    return absl::InvalidArgumentError(absl::StrCat("append capacity ", append_capacity, " is negative"));
  }
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.format = f;
  m.prefix = host.prefix_tokens();
  m.appended = host.appended_tokens();
  m.capacity = m.appended + append_capacity;
  m.window = host.window_tokens();
  m.residual = m.residual_on_device = host.residual_tokens();
  const int64_t d = f.head_dim, hkv = f.num_kv_heads, vg = d / kQuantGroup;
  // Capacities as CompressedLayer::Reserve(append_capacity) takes them: the
  // groups the residual will flush, and up to 32 residual rows.
  const int64_t flushes = (m.residual + append_capacity) / kQuantGroup;
  const int64_t residual_rows =
      std::max({m.residual, std::min<int64_t>(m.residual + append_capacity, kQuantGroup),
                std::min<int64_t>(m.capacity, kQuantGroup)});
  struct Piece {
    const void* src;
    size_t bytes;     // of src
    size_t capacity;  // >= bytes
    size_t offset = 0;
  };
  std::vector<Piece> pieces;
  size_t total = 0;
  auto add = [&](const void* src, size_t bytes, size_t capacity) {
    capacity = std::max(capacity, bytes);
    pieces.push_back({src, bytes, capacity, total});
    m.capacity_bytes += static_cast<int64_t>(capacity);
    total += (capacity + 255) / 256 * 256;
  };
  m.heads.resize(hkv);
  for (int64_t h = 0; h < hkv; ++h) {
    const CompressedHead& hd = host.head(h);
    HeadBuffers& b = m.heads[h];
    b.initial_kept = hd.initial_kept;
    b.quantized = hd.quantized;
    b.key_groups = hd.KeyGroups();
    b.host_residual_k = hd.residual_k;
    b.host_residual_v = hd.residual_v;
    const int kbits = f.KBits(h), vbits = f.VBits(h);
    const size_t qcap = static_cast<size_t>(hd.quantized + flushes * kQuantGroup);
    const size_t gcap = static_cast<size_t>(b.key_groups + flushes);
    add(hd.k_codes.data(), hd.k_codes.size(), qcap * PackedRowBytes(d, kbits));
    add(hd.k_scale.data(), 2 * hd.k_scale.size(), kbits < kFp16Bits ? 2 * gcap * d : 0);
    add(hd.k_min.data(), 2 * hd.k_min.size(), kbits < kFp16Bits ? 2 * gcap * d : 0);
    add(hd.v_codes.data(), hd.v_codes.size(), qcap * PackedRowBytes(d, vbits));
    add(hd.v_scale.data(), 2 * hd.v_scale.size(), vbits < kFp16Bits ? 2 * qcap * vg : 0);
    add(hd.v_min.data(), 2 * hd.v_min.size(), vbits < kFp16Bits ? 2 * qcap * vg : 0);
    add(hd.window_k.data(), 2 * hd.window_k.size(), 0);
    add(hd.window_v.data(), 2 * hd.window_v.size(), 0);
    add(hd.residual_k.data(), 2 * hd.residual_k.size(), 2 * residual_rows * d);
    add(hd.residual_v.data(), 2 * hd.residual_v.size(), 2 * residual_rows * d);
    add(hd.position.data(), 4 * hd.position.size(), 4 * qcap);
  }
  MOEND_RETURN_IF_ERROR(m.arena.Reserve(total));
  std::vector<uint8_t> staging(total, 0);
  for (const Piece& p : pieces) {
    if (p.bytes) std::memcpy(staging.data() + p.offset, p.src, p.bytes);
  }
  uint8_t* base = m.arena.as<uint8_t>();
  MOEND_CUDA_RETURN(cudaMemcpy(base, staging.data(), total, cudaMemcpyHostToDevice));
  size_t n = 0;
  for (HeadBuffers& b : m.heads) {
    auto at = [&](size_t i) { return base + pieces[n + i].offset; };
    b.k_codes = at(0);
    b.k_scale = reinterpret_cast<uint16_t*>(at(1));
    b.k_min = reinterpret_cast<uint16_t*>(at(2));
    b.v_codes = at(3);
    b.v_scale = reinterpret_cast<uint16_t*>(at(4));
    b.v_min = reinterpret_cast<uint16_t*>(at(5));
    b.window_k = reinterpret_cast<uint16_t*>(at(6));
    b.window_v = reinterpret_cast<uint16_t*>(at(7));
    b.residual_k = reinterpret_cast<uint16_t*>(at(8));
    b.residual_v = reinterpret_cast<uint16_t*>(at(9));
    b.position = reinterpret_cast<int32_t*>(at(10));
    n += 11;
  }
  return std::unique_ptr<DeviceLayerCache>(new DeviceLayerCache(std::move(impl)));
}

const LayerFormat& DeviceLayerCache::format() const { return impl_->format; }
int64_t DeviceLayerCache::prefix_tokens() const { return impl_->prefix; }
int64_t DeviceLayerCache::appended_tokens() const { return impl_->appended; }
int64_t DeviceLayerCache::appended_capacity() const { return impl_->capacity; }
int64_t DeviceLayerCache::window_tokens() const { return impl_->window; }
int64_t DeviceLayerCache::residual_tokens() const { return impl_->residual; }
int64_t DeviceLayerCache::initial_kept(int64_t h) const { return impl_->heads[h].initial_kept; }
int64_t DeviceLayerCache::quantized(int64_t h) const { return impl_->heads[h].quantized; }
int64_t DeviceLayerCache::CapacityBytes() const { return impl_->capacity_bytes; }

int64_t DeviceLayerCache::Bytes() const {
  const Impl& m = *impl_;
  const int64_t d = m.format.head_dim;
  int64_t bytes = 0;
  for (int64_t h = 0; h < m.format.num_kv_heads; ++h) {
    const HeadBuffers& b = m.heads[h];
    const int kbits = m.format.KBits(h), vbits = m.format.VBits(h);
    bytes += b.quantized * (PackedRowBytes(d, kbits) + PackedRowBytes(d, vbits));
    if (kbits < kFp16Bits) bytes += 2 * b.key_groups * d * 2;
    if (vbits < kFp16Bits) bytes += 2 * b.quantized * (d / kQuantGroup) * 2;
    bytes += 2 * (m.window + m.residual) * d * 2;
  }
  return bytes;
}

DecodeSequenceShape DeviceLayerCache::Shape() const {
  const Impl& m = *impl_;
  DecodeSequenceShape s;
  s.format = m.format;
  s.window = m.window;
  s.appended = m.capacity;
  for (const HeadBuffers& b : m.heads) s.initial_kept.push_back(b.initial_kept);
  return s;
}

HeadCacheView DeviceLayerCache::View(int64_t h) const {
  const Impl& m = *impl_;
  const HeadBuffers& b = m.heads[h];
  HeadCacheView v;
  v.k_codes = b.k_codes;
  v.k_scale = b.k_scale;
  v.k_min = b.k_min;
  v.v_codes = b.v_codes;
  v.v_scale = b.v_scale;
  v.v_min = b.v_min;
  v.window_k = b.window_k;
  v.window_v = b.window_v;
  v.residual_k = b.residual_k;
  v.residual_v = b.residual_v;
  v.initial_kept = static_cast<int32_t>(b.initial_kept);
  v.n_quant = static_cast<int32_t>(b.quantized);
  v.n_window = static_cast<int32_t>(m.window);
  v.n_residual = static_cast<int32_t>(m.residual);
  return v;
}

absl::Status DeviceLayerCache::Append(const float* k, const float* v, int64_t tokens, int64_t head_stride,
                                      void* stream) {
  Impl& m = *impl_;
  if (tokens < 0) return absl::InvalidArgumentError("Append: negative token count");
  if (tokens == 0) return absl::OkStatus();
  if (k == nullptr || v == nullptr) return absl::InvalidArgumentError("Append: null k or v");
  if (head_stride == 0) head_stride = tokens;
  if (head_stride < tokens) {
    return absl::InvalidArgumentError(absl::StrCat("Append: head stride ", head_stride, " < tokens ", tokens));
  }
  if (m.appended + tokens > m.capacity) {
    return absl::OutOfRangeError(absl::StrCat("Append of ", tokens, " tokens to a device cache holding ",
                                              m.appended, " of its ", m.capacity,
                                              " appended tokens (its capacity is fixed at Upload)"));
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t d = m.format.head_dim;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < m.format.num_kv_heads; ++h) {
      const float* kr = k + (h * head_stride + t) * d;
      const float* vr = v + (h * head_stride + t) * d;
      HeadBuffers& b = m.heads[h];
      for (int64_t i = 0; i < d; ++i) b.host_residual_k.push_back(FloatToHalf(kr[i]));
      for (int64_t i = 0; i < d; ++i) b.host_residual_v.push_back(FloatToHalf(vr[i]));
    }
    ++m.appended;
    ++m.residual;
    if (m.residual == kQuantGroup) MOEND_RETURN_IF_ERROR(m.Flush(s));
  }
  return m.WriteResidual(s);
}

// The residual's rows not yet on the device, head by head.
absl::Status DeviceLayerCache::Impl::WriteResidual(cudaStream_t s) {
  const int64_t d = format.head_dim;
  if (residual <= residual_on_device) return absl::OkStatus();
  const size_t bytes = 2 * (residual - residual_on_device) * d;
  for (HeadBuffers& b : heads) {
    const int64_t from = residual_on_device * d;
    MOEND_CUDA_RETURN(cudaMemcpyAsync(b.residual_k + from, b.host_residual_k.data() + from, bytes,
                                      cudaMemcpyHostToDevice, s));
    MOEND_CUDA_RETURN(cudaMemcpyAsync(b.residual_v + from, b.host_residual_v.data() + from, bytes,
                                      cudaMemcpyHostToDevice, s));
  }
  residual_on_device = residual;
  return absl::OkStatus();
}

// The residual as one new group, quantized as CompressedLayer's flush does
// (QuantizeResidual), written into the device buffers. The copies
// read pageable host memory, which CUDA stages before cudaMemcpyAsync
// returns, so the scratch vectors may go out of scope.
absl::Status DeviceLayerCache::Impl::Flush(cudaStream_t s) {
  const int64_t d = format.head_dim, n = residual, vgroups = d / kQuantGroup;
  for (int64_t h = 0; h < format.num_kv_heads; ++h) {
    HeadBuffers& b = heads[h];
    const int kbits = format.KBits(h), vbits = format.VBits(h);
    const int64_t krow = PackedRowBytes(d, kbits), vrow = PackedRowBytes(d, vbits);
    const QuantizedGroup g = QuantizeResidual(b.host_residual_k.data(), b.host_residual_v.data(),
                                              n, d, kbits, vbits);
    std::vector<int32_t> pos(n);
    for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(prefix + appended - n + i);
    const int64_t q = b.quantized;
    MOEND_CUDA_RETURN(cudaMemcpyAsync(b.k_codes + q * krow, g.k_codes.data(), g.k_codes.size(), cudaMemcpyHostToDevice, s));
    MOEND_CUDA_RETURN(cudaMemcpyAsync(b.v_codes + q * vrow, g.v_codes.data(), g.v_codes.size(), cudaMemcpyHostToDevice, s));
    if (kbits < kFp16Bits) {
      MOEND_CUDA_RETURN(cudaMemcpyAsync(b.k_scale + b.key_groups * d, g.k_scale.data(), 2 * d, cudaMemcpyHostToDevice, s));
      MOEND_CUDA_RETURN(cudaMemcpyAsync(b.k_min + b.key_groups * d, g.k_min.data(), 2 * d, cudaMemcpyHostToDevice, s));
    }
    if (vbits < kFp16Bits) {
      MOEND_CUDA_RETURN(
          cudaMemcpyAsync(b.v_scale + q * vgroups, g.v_scale.data(), 2 * g.v_scale.size(), cudaMemcpyHostToDevice, s));
      MOEND_CUDA_RETURN(
          cudaMemcpyAsync(b.v_min + q * vgroups, g.v_min.data(), 2 * g.v_min.size(), cudaMemcpyHostToDevice, s));
    }
    MOEND_CUDA_RETURN(cudaMemcpyAsync(b.position + q, pos.data(), 4 * n, cudaMemcpyHostToDevice, s));
    b.quantized = q + n;
    b.key_groups += 1;
    b.host_residual_k.clear();
    b.host_residual_v.clear();
  }
  residual = residual_on_device = 0;
  return absl::OkStatus();
}

// ------------------------------------------------------------------ plan/run --
struct DecodePlan::Impl {
  DecodeSchedule schedule;
  DeviceArray workspace, table;
  std::vector<HeadCacheView> host_table;  // reused by every run
  std::vector<int> max_units;
};

DecodePlan::DecodePlan() : impl_(std::make_unique<Impl>()) {}
DecodePlan::~DecodePlan() = default;
DecodePlan::DecodePlan(DecodePlan&&) noexcept = default;
DecodePlan& DecodePlan::operator=(DecodePlan&&) noexcept = default;
const DecodeSchedule& DecodePlan::schedule() const { return impl_->schedule; }

absl::StatusOr<DecodePlan> PlanDecode(const DecodeBatchShape& shape) {
  MOEND_ASSIGN_OR_RETURN(DecodeSchedule s, ScheduleDecode(shape, DeviceSplitPolicy()));
  DecodePlan plan;
  DecodePlan::Impl& m = *plan.impl_;
  m.schedule = std::move(s);
  MOEND_RETURN_IF_ERROR(m.workspace.Reserve(m.schedule.workspace_floats * sizeof(float)));
  MOEND_RETURN_IF_ERROR(m.table.Reserve(m.schedule.table_entries * sizeof(HeadCacheView)));
  m.host_table.reserve(m.schedule.table_entries);
  m.max_units.reserve(m.schedule.launches.size());
  return plan;
}

absl::StatusOr<DecodePlan> PlanDecode(absl::Span<const DeviceLayerCache* const> caches, int64_t num_heads) {
  DecodeBatchShape shape;
  shape.num_heads = num_heads;
  for (const DeviceLayerCache* c : caches) {
    if (c == nullptr) return absl::InvalidArgumentError("PlanDecode: a null cache");
    shape.sequences.push_back(c->Shape());
  }
  return PlanDecode(shape);
}

absl::Status RunDecode(DecodePlan& plan, absl::Span<const DeviceLayerCache* const> caches, const float* q,
                       float* out, void* stream) {
  DecodePlan::Impl& m = *plan.impl_;
  const DecodeSchedule& s = m.schedule;
  if (static_cast<int64_t>(caches.size()) != s.items) {
    return absl::InvalidArgumentError(
        absl::StrCat("RunDecode of ", caches.size(), " caches on a plan for ", s.items));
  }
  if (q == nullptr || out == nullptr) return absl::InvalidArgumentError("RunDecode: q or out is null");
  for (size_t i = 0; i < caches.size(); ++i) {
    if (caches[i] == nullptr) return absl::InvalidArgumentError(absl::StrCat("RunDecode: cache ", i, " is null"));
    if (!(caches[i]->format() == s.formats[i])) {
      return absl::InvalidArgumentError(absl::StrCat("RunDecode: cache ", i, " has bits ",
                                                     BitsString(caches[i]->format()), ", the plan ",
                                                     BitsString(s.formats[i])));
    }
  }
  BuildViewTable(s, caches, 0, &m.host_table, &m.max_units);
  MOEND_CUDA_RETURN(cudaMemcpyAsync(m.table.as<HeadCacheView>(), m.host_table.data(),
                                    m.host_table.size() * sizeof(HeadCacheView), cudaMemcpyHostToDevice,
                                    static_cast<cudaStream_t>(stream)));
  ScheduleIo io;
  io.q = q;
  io.q_item_stride = s.num_heads * s.head_dim;
  io.q_head_stride = s.head_dim;
  io.out = out;
  io.out_item_stride = s.num_heads * s.head_dim;
  io.out_head_stride = s.head_dim;
  return LaunchSchedule(s, m.table.as<HeadCacheView>(), m.max_units, io, m.workspace.as<float>(), stream);
}

// ------------------------------------------------------------ launch path --
void BuildViewTable(const DecodeSchedule& s, absl::Span<const DeviceLayerCache* const> items, int tail_units,
                    std::vector<HeadCacheView>* table, std::vector<int>* max_units) {
  table->clear();
  max_units->clear();
  for (const DecodeLaunch& l : s.launches) {
    int units = 1;
    for (int64_t i = l.item_begin; i < l.item_end; ++i) {
      for (int64_t h = l.kv_begin; h < l.kv_end; ++h) {
        table->push_back(items[i]->View(h));
        units = std::max(units, AttentionUnits(table->back(), 0) + tail_units);
      }
    }
    max_units->push_back(units);
  }
}

absl::Status LaunchSchedule(const DecodeSchedule& s, const HeadCacheView* table, absl::Span<const int> max_units,
                            const ScheduleIo& io, float* workspace, void* stream) {
  const int64_t group = s.num_heads / s.num_kv_heads;
  for (size_t r = 0; r < s.launches.size(); ++r) {
    const DecodeLaunch& l = s.launches[r];
    const int64_t first_q = l.kv_begin * group;  // first query head of the launch
    AttentionParams p;
    p.heads = table + l.table_offset;
    p.q = io.q + l.item_begin * io.q_item_stride + first_q * io.q_head_stride;
    p.q_item_stride = io.q_item_stride;
    p.q_head_stride = io.q_head_stride;
    p.out = io.out + l.item_begin * io.out_item_stride + first_q * io.out_head_stride;
    p.out_item_stride = io.out_item_stride;
    p.out_head_stride = io.out_head_stride;
    if (io.tail_k != nullptr) {
      p.tail_k = io.tail_k + l.kv_begin * io.tail_head_stride;
      p.tail_v = io.tail_v + l.kv_begin * io.tail_head_stride;
    }
    p.tail_head_stride = io.tail_head_stride;
    p.tail_len = io.tail_len != nullptr ? io.tail_len + l.item_begin : nullptr;
    p.items = static_cast<int>(l.item_end - l.item_begin);
    p.num_heads = static_cast<int>((l.kv_end - l.kv_begin) * group);
    p.num_kv_heads = static_cast<int>(l.kv_end - l.kv_begin);
    p.head_dim = static_cast<int>(s.head_dim);
    p.kbits = l.kbits;
    p.vbits = l.vbits;
    p.max_units = max_units[r];
    p.splits = l.splits;
    p.workspace = workspace;
    MOEND_CUDA_RETURN(LaunchAttention(p, stream));
  }
  return absl::OkStatus();
}

}  // namespace moend::kernels::cuda

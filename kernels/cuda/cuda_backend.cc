// Host glue of the CUDA backend: moves host data to the device, runs the
// kernels of kernels/cuda/*.cu and converts every cudaError_t into a Status.
#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/compression.h"
#include "core/status_macros.h"
#include "kernels/cuda/launch.h"

namespace moend::kernels::cuda {
namespace {

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("CUDA error in ", what, ": ", cudaGetErrorName(e), " (",
                                          cudaGetErrorString(e), ")"));
}
#define MOEND_CUDA_RETURN(expr) MOEND_RETURN_IF_ERROR(CudaStatus(static_cast<cudaError_t>(expr), #expr))

// Owning device allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)) {}
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  absl::Status Allocate(size_t bytes) {
    if (bytes == 0) bytes = 16;
    MOEND_CUDA_RETURN(cudaMalloc(&ptr_, bytes));
    return absl::OkStatus();
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
};

// Copies rows [0, rows) of each of `heads` blocks of `stride` rows (D floats)
// into a dense device array [heads, rows, D].
absl::Status UploadRows(const float* src, int64_t heads, int64_t stride, int64_t rows, int64_t d,
                        float* dst) {
  if (heads * rows == 0) return absl::OkStatus();
  MOEND_CUDA_RETURN(cudaMemcpy2D(dst, rows * d * sizeof(float), src, stride * d * sizeof(float),
                                 rows * d * sizeof(float), heads, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

template <typename T>
absl::Status Download(std::vector<T>& dst, const void* src, int64_t count) {
  dst.resize(count);
  if (count == 0) return absl::OkStatus();
  MOEND_CUDA_RETURN(cudaMemcpy(dst.data(), src, count * sizeof(T), cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

// A run of consecutive KV heads [begin, end) of a layer that share their bit
// widths: the attention kernel is instantiated per (kbits, vbits), so each
// run is one launch. A uniform layer is one run over every head.
struct HeadRun {
  int64_t begin = 0, end = 0;
  int kbits = 16, vbits = 16;
};

std::vector<HeadRun> BitRuns(const LayerFormat& f) {
  std::vector<HeadRun> runs;
  for (int64_t h = 0; h < f.num_kv_heads; ++h) {
    if (!runs.empty() && runs.back().kbits == f.KBits(h) && runs.back().vbits == f.VBits(h)) {
      runs.back().end = h + 1;
    } else {
      runs.push_back({h, h + 1, f.KBits(h), f.VBits(h)});
    }
  }
  return runs;
}

// Device copies of compressed layers, laid out in one arena, plus one
// HeadCacheView table per head run, [repeat * items, run heads], that the
// attention kernel reads.
class DeviceCaches {
 public:
  absl::Status Upload(absl::Span<const CompressedLayer* const> caches, int repeat,
                      const std::vector<HeadRun>& runs) {
    const int64_t hkv = caches[0]->format().num_kv_heads;
    // Pass 1: offsets (256-byte aligned) of every buffer.
    struct Piece { const void* src; size_t bytes; size_t offset; };
    std::vector<Piece> pieces;
    size_t total = 0;
    auto add = [&](const void* src, size_t bytes) {
      pieces.push_back({src, bytes, total});
      total += (bytes + 255) / 256 * 256;
      return pieces.size() - 1;
    };
    std::vector<std::array<size_t, 10>> idx;
    for (const CompressedLayer* c : caches) {
      for (int64_t h = 0; h < hkv; ++h) {
        const CompressedHead& hd = c->head(h);
        idx.push_back({add(hd.k_codes.data(), hd.k_codes.size()),
                       add(hd.k_scale.data(), 2 * hd.k_scale.size()),
                       add(hd.k_min.data(), 2 * hd.k_min.size()),
                       add(hd.v_codes.data(), hd.v_codes.size()),
                       add(hd.v_scale.data(), 2 * hd.v_scale.size()),
                       add(hd.v_min.data(), 2 * hd.v_min.size()),
                       add(hd.window_k.data(), 2 * hd.window_k.size()),
                       add(hd.window_v.data(), 2 * hd.window_v.size()),
                       add(hd.residual_k.data(), 2 * hd.residual_k.size()),
                       add(hd.residual_v.data(), 2 * hd.residual_v.size())});
      }
    }
    MOEND_RETURN_IF_ERROR(arena_.Allocate(total));
    std::vector<uint8_t> staging(total, 0);
    for (const Piece& p : pieces) {
      if (p.bytes) std::memcpy(staging.data() + p.offset, p.src, p.bytes);
    }
    MOEND_CUDA_RETURN(cudaMemcpy(arena_.as<uint8_t>(), staging.data(), total, cudaMemcpyHostToDevice));
    uint8_t* base = arena_.as<uint8_t>();
    auto at = [&](size_t piece) { return base + pieces[piece].offset; };
    std::vector<HeadCacheView> views;  // [items, hkv]
    max_units_ = 0;
    size_t n = 0;
    for (const CompressedLayer* c : caches) {
      for (int64_t h = 0; h < hkv; ++h, ++n) {
        const CompressedHead& hd = c->head(h);
        const auto& ix = idx[n];
        HeadCacheView v;
        v.k_codes = at(ix[0]);
        v.k_scale = reinterpret_cast<const uint16_t*>(at(ix[1]));
        v.k_min = reinterpret_cast<const uint16_t*>(at(ix[2]));
        v.v_codes = at(ix[3]);
        v.v_scale = reinterpret_cast<const uint16_t*>(at(ix[4]));
        v.v_min = reinterpret_cast<const uint16_t*>(at(ix[5]));
        v.window_k = reinterpret_cast<const uint16_t*>(at(ix[6]));
        v.window_v = reinterpret_cast<const uint16_t*>(at(ix[7]));
        v.residual_k = reinterpret_cast<const uint16_t*>(at(ix[8]));
        v.residual_v = reinterpret_cast<const uint16_t*>(at(ix[9]));
        v.initial_kept = static_cast<int32_t>(hd.initial_kept);
        v.n_quant = static_cast<int32_t>(hd.quantized);
        v.n_window = static_cast<int32_t>(c->window_tokens());
        v.n_residual = static_cast<int32_t>(c->residual_tokens());
        views.push_back(v);
      }
    }
    // Per run, [repeat * items, run heads]. Probe mode: every item sees the
    // same (single) cache. One run over all heads is the plain [items, hkv].
    std::vector<HeadCacheView> table;
    table.reserve(views.size() * repeat);
    run_offset_.clear();
    for (const HeadRun& run : runs) {
      run_offset_.push_back(table.size());
      for (int r = 0; r < repeat; ++r) {
        for (size_t item = 0; item < caches.size(); ++item) {
          table.insert(table.end(), views.begin() + item * hkv + run.begin,
                       views.begin() + item * hkv + run.end);
        }
      }
    }
    for (const HeadCacheView& v : views) max_units_ = std::max(max_units_, AttentionUnits(v, 0));
    MOEND_RETURN_IF_ERROR(table_.Allocate(table.size() * sizeof(HeadCacheView)));
    MOEND_CUDA_RETURN(cudaMemcpy(table_.as<HeadCacheView>(), table.data(), table.size() * sizeof(HeadCacheView),
                                 cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }
  // The table of head run `run` (an index into the runs given to Upload).
  const HeadCacheView* table(size_t run) const { return table_.as<HeadCacheView>() + run_offset_[run]; }
  int max_units() const { return max_units_; }

 private:
  DeviceBuffer arena_, table_;
  std::vector<size_t> run_offset_;
  int max_units_ = 0;
};

}  // namespace

bool DeviceAvailable(std::string* reason) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    *reason = absl::StrCat("no CUDA device: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
    cudaGetLastError();
    return false;
  }
  if (n == 0) {
    *reason = "no CUDA device: cudaGetDeviceCount returned 0";
    return false;
  }
  return true;
}

absl::StatusOr<EvictionScores> ComputeEvictionScores(const LayerTensors& x, int64_t c) {
  const int64_t d = x.head_dim, w = WindowTokens(c), cand = CandidateTokens(c);
  EvictionScores out{x.num_kv_heads, c, cand, {}};
  if (cand == 0) return out;
  DeviceBuffer q, k, ws, scores;
  MOEND_RETURN_IF_ERROR(q.Allocate(x.num_heads * w * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(k.Allocate(x.num_kv_heads * c * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(ws.Allocate(
      ScoreWorkspaceFloats(x.num_heads, x.num_kv_heads, w, c) * sizeof(float)));
  MOEND_RETURN_IF_ERROR(scores.Allocate(x.num_kv_heads * cand * sizeof(float)));
  MOEND_RETURN_IF_ERROR(UploadRows(x.q + (c - w) * d, x.num_heads, x.tokens, w, d, q.as<float>()));
  MOEND_RETURN_IF_ERROR(UploadRows(x.k, x.num_kv_heads, x.tokens, c, d, k.as<float>()));
  ScoreParams p;
  p.q = q.as<float>();
  p.k = k.as<float>();
  p.k_head_stride = c * d;
  p.num_heads = static_cast<int>(x.num_heads);
  p.num_kv_heads = static_cast<int>(x.num_kv_heads);
  p.head_dim = static_cast<int>(d);
  p.prefix = static_cast<int>(c);
  p.window = static_cast<int>(w);
  p.workspace = ws.as<float>();
  p.scores = scores.as<float>();
  MOEND_CUDA_RETURN(LaunchScores(p, nullptr));
  MOEND_RETURN_IF_ERROR(Download(out.score, scores.as<float>(), x.num_kv_heads * cand));
  return out;
}

absl::StatusOr<KeptSet> SelectKept(const EvictionScores& scores, int64_t kept) {
  KeptSet out{scores.num_kv_heads, scores.prefix_tokens, kept, {}};
  if (kept == 0) return out;
  DeviceBuffer s, idx;
  MOEND_RETURN_IF_ERROR(s.Allocate(scores.score.size() * sizeof(float)));
  MOEND_RETURN_IF_ERROR(idx.Allocate(scores.num_kv_heads * kept * sizeof(int32_t)));
  MOEND_CUDA_RETURN(cudaMemcpy(s.as<float>(), scores.score.data(), scores.score.size() * sizeof(float),
                               cudaMemcpyHostToDevice));
  SelectParams p;
  p.scores = s.as<float>();
  p.num_kv_heads = static_cast<int>(scores.num_kv_heads);
  p.candidates = static_cast<int>(scores.candidates);
  p.kept = static_cast<int>(kept);
  p.index = idx.as<int32_t>();
  MOEND_CUDA_RETURN(LaunchSelect(p, nullptr));
  MOEND_RETURN_IF_ERROR(Download(out.index, idx.as<int32_t>(), scores.num_kv_heads * kept));
  return out;
}

absl::StatusOr<CompressedLayer> QuantizeKept(const LayerTensors& x, const KeptSet& kept, int kbits, int vbits) {
  const int64_t d = x.head_dim, c = kept.prefix_tokens, m = kept.kept, hkv = x.num_kv_heads;
  const int64_t w = WindowTokens(c), groups = (m + kQuantGroup - 1) / kQuantGroup;
  const int64_t krow = PackedRowBytes(d, kbits), vrow = PackedRowBytes(d, vbits);
  const int64_t kpar = kbits < kFp16Bits ? hkv * groups * d : 0;
  const int64_t vpar = vbits < kFp16Bits ? hkv * m * (d / kQuantGroup) : 0;
  DeviceBuffer k, v, idx, kc, ks, km, vc, vs, vm, wk, wv;
  MOEND_RETURN_IF_ERROR(k.Allocate(hkv * c * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(v.Allocate(hkv * c * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(idx.Allocate(hkv * m * sizeof(int32_t)));
  MOEND_RETURN_IF_ERROR(kc.Allocate(hkv * m * krow));
  MOEND_RETURN_IF_ERROR(ks.Allocate(kpar * 2));
  MOEND_RETURN_IF_ERROR(km.Allocate(kpar * 2));
  MOEND_RETURN_IF_ERROR(vc.Allocate(hkv * m * vrow));
  MOEND_RETURN_IF_ERROR(vs.Allocate(vpar * 2));
  MOEND_RETURN_IF_ERROR(vm.Allocate(vpar * 2));
  MOEND_RETURN_IF_ERROR(wk.Allocate(hkv * w * d * 2));
  MOEND_RETURN_IF_ERROR(wv.Allocate(hkv * w * d * 2));
  MOEND_RETURN_IF_ERROR(UploadRows(x.k, hkv, x.tokens, c, d, k.as<float>()));
  MOEND_RETURN_IF_ERROR(UploadRows(x.v, hkv, x.tokens, c, d, v.as<float>()));
  if (m > 0) {
    MOEND_CUDA_RETURN(cudaMemcpy(idx.as<int32_t>(), kept.index.data(), hkv * m * sizeof(int32_t),
                                 cudaMemcpyHostToDevice));
  }
  QuantizeParams p;
  p.k = k.as<float>();
  p.v = v.as<float>();
  p.head_stride = c * d;
  p.index = idx.as<int32_t>();
  p.num_kv_heads = static_cast<int>(hkv);
  p.head_dim = static_cast<int>(d);
  p.kept = static_cast<int>(m);
  p.prefix = static_cast<int>(c);
  p.window = static_cast<int>(w);
  p.kbits = kbits;
  p.vbits = vbits;
  p.k_codes = kc.as<uint8_t>();
  p.k_scale = ks.as<uint16_t>();
  p.k_min = km.as<uint16_t>();
  p.v_codes = vc.as<uint8_t>();
  p.v_scale = vs.as<uint16_t>();
  p.v_min = vm.as<uint16_t>();
  p.window_k = wk.as<uint16_t>();
  p.window_v = wv.as<uint16_t>();
  MOEND_CUDA_RETURN(LaunchQuantize(p, nullptr));
  MOEND_CUDA_RETURN(cudaDeviceSynchronize());

  std::vector<uint8_t> kc_h, vc_h;
  std::vector<uint16_t> ks_h, km_h, vs_h, vm_h, wk_h, wv_h;
  MOEND_RETURN_IF_ERROR(Download(kc_h, kc.as<uint8_t>(), hkv * m * krow));
  MOEND_RETURN_IF_ERROR(Download(vc_h, vc.as<uint8_t>(), hkv * m * vrow));
  MOEND_RETURN_IF_ERROR(Download(ks_h, ks.as<uint16_t>(), kpar));
  MOEND_RETURN_IF_ERROR(Download(km_h, km.as<uint16_t>(), kpar));
  MOEND_RETURN_IF_ERROR(Download(vs_h, vs.as<uint16_t>(), vpar));
  MOEND_RETURN_IF_ERROR(Download(vm_h, vm.as<uint16_t>(), vpar));
  MOEND_RETURN_IF_ERROR(Download(wk_h, wk.as<uint16_t>(), hkv * w * d));
  MOEND_RETURN_IF_ERROR(Download(wv_h, wv.as<uint16_t>(), hkv * w * d));

  CompressedLayer layer({hkv, d, kbits, vbits}, c);
  for (int64_t h = 0; h < hkv; ++h) {
    CompressedHead& hd = layer.head(h);
    hd.initial_kept = hd.quantized = m;
    hd.position.assign(kept.index.begin() + h * m, kept.index.begin() + (h + 1) * m);
    hd.k_codes.assign(kc_h.begin() + h * m * krow, kc_h.begin() + (h + 1) * m * krow);
    hd.v_codes.assign(vc_h.begin() + h * m * vrow, vc_h.begin() + (h + 1) * m * vrow);
    if (kpar) {
      hd.k_scale.assign(ks_h.begin() + h * groups * d, ks_h.begin() + (h + 1) * groups * d);
      hd.k_min.assign(km_h.begin() + h * groups * d, km_h.begin() + (h + 1) * groups * d);
    }
    if (vpar) {
      const int64_t per = m * (d / kQuantGroup);
      hd.v_scale.assign(vs_h.begin() + h * per, vs_h.begin() + (h + 1) * per);
      hd.v_min.assign(vm_h.begin() + h * per, vm_h.begin() + (h + 1) * per);
    }
    hd.window_k.assign(wk_h.begin() + h * w * d, wk_h.begin() + (h + 1) * w * d);
    hd.window_v.assign(wv_h.begin() + h * w * d, wv_h.begin() + (h + 1) * w * d);
  }
  return layer;
}

// Query heads of a KV head run: the run's KV heads times the GQA group.
// Each run is launched on its own (same stream, so one workspace serves all).
absl::Status DecodeAttention(absl::Span<const CompressedLayer* const> caches, const float* q, int64_t num_heads,
                             float* out) {
  const LayerFormat& f = caches[0]->format();
  const int items = static_cast<int>(caches.size());
  const int64_t d = f.head_dim, group = num_heads / f.num_kv_heads;
  const std::vector<HeadRun> runs = BitRuns(f);
  DeviceCaches dev;
  MOEND_RETURN_IF_ERROR(dev.Upload(caches, 1, runs));
  std::vector<int> splits(runs.size());
  int64_t ws_floats = 0;
  for (size_t r = 0; r < runs.size(); ++r) {
    const int run_kv = static_cast<int>(runs[r].end - runs[r].begin);
    splits[r] = AttentionSplits(items, static_cast<int>(run_kv * group), run_kv, std::max(1, dev.max_units()));
    ws_floats = std::max(ws_floats, AttentionWorkspaceFloats(items, static_cast<int>(run_kv * group),
                                                             static_cast<int>(d), splits[r]));
  }
  DeviceBuffer dq, dout, ws;
  MOEND_RETURN_IF_ERROR(dq.Allocate(items * num_heads * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(dout.Allocate(items * num_heads * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(ws.Allocate(ws_floats * sizeof(float)));
  MOEND_CUDA_RETURN(cudaMemcpy(dq.as<float>(), q, items * num_heads * d * sizeof(float), cudaMemcpyHostToDevice));
  for (size_t r = 0; r < runs.size(); ++r) {
    const HeadRun& run = runs[r];
    const int64_t first_q = run.begin * group;  // first query head of the run
    AttentionParams p;
    p.heads = dev.table(r);
    p.q = dq.as<float>() + first_q * d;
    p.q_item_stride = num_heads * d;
    p.q_head_stride = d;
    p.out = dout.as<float>() + first_q * d;
    p.out_item_stride = num_heads * d;
    p.out_head_stride = d;
    p.items = items;
    p.num_heads = static_cast<int>((run.end - run.begin) * group);
    p.num_kv_heads = static_cast<int>(run.end - run.begin);
    p.head_dim = static_cast<int>(d);
    p.kbits = run.kbits;
    p.vbits = run.vbits;
    p.max_units = std::max(1, dev.max_units());
    p.splits = splits[r];
    p.workspace = ws.as<float>();
    MOEND_CUDA_RETURN(LaunchAttention(p, nullptr));
  }
  MOEND_CUDA_RETURN(cudaMemcpy(out, dout.as<float>(), items * num_heads * d * sizeof(float),
                               cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::Status ProbeAttention(const CompressedLayer& prefix, const ProbeQueries& pq, float* out) {
  const LayerFormat& f = prefix.format();
  const int items = static_cast<int>(pq.num_queries);
  const int64_t d = f.head_dim, hkv = f.num_kv_heads, hq = pq.num_heads, group = hq / hkv;
  const int64_t q_stride = pq.q_head_stride ? pq.q_head_stride : pq.num_queries;
  const int64_t t_stride = pq.tail_head_stride ? pq.tail_head_stride : pq.tail_tokens;
  const std::vector<HeadRun> runs = BitRuns(f);
  const CompressedLayer* one[1] = {&prefix};
  DeviceCaches dev;
  MOEND_RETURN_IF_ERROR(dev.Upload(absl::MakeConstSpan(one, 1), items, runs));
  std::vector<int32_t> tail_len(items);
  int max_units = 0;
  for (int i = 0; i < items; ++i) {
    tail_len[i] = static_cast<int32_t>(pq.query_offset + i + 1);
  }
  max_units = dev.max_units() + static_cast<int>((tail_len.back() + 31) / 32);
  std::vector<int> splits(runs.size());
  int64_t ws_floats = 0;
  for (size_t r = 0; r < runs.size(); ++r) {
    const int run_kv = static_cast<int>(runs[r].end - runs[r].begin);
    splits[r] = AttentionSplits(items, static_cast<int>(run_kv * group), run_kv, max_units);
    ws_floats = std::max(ws_floats, AttentionWorkspaceFloats(items, static_cast<int>(run_kv * group),
                                                             static_cast<int>(d), splits[r]));
  }
  DeviceBuffer dq, dout, ws, tk, tv, tl;
  MOEND_RETURN_IF_ERROR(dq.Allocate(hq * items * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(dout.Allocate(hq * items * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(ws.Allocate(ws_floats * sizeof(float)));
  MOEND_RETURN_IF_ERROR(tk.Allocate(hkv * pq.tail_tokens * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(tv.Allocate(hkv * pq.tail_tokens * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(tl.Allocate(items * sizeof(int32_t)));
  MOEND_RETURN_IF_ERROR(UploadRows(pq.q, hq, q_stride, items, d, dq.as<float>()));
  MOEND_RETURN_IF_ERROR(UploadRows(pq.k_tail, hkv, t_stride, pq.tail_tokens, d, tk.as<float>()));
  MOEND_RETURN_IF_ERROR(UploadRows(pq.v_tail, hkv, t_stride, pq.tail_tokens, d, tv.as<float>()));
  MOEND_CUDA_RETURN(cudaMemcpy(tl.as<int32_t>(), tail_len.data(), items * sizeof(int32_t), cudaMemcpyHostToDevice));
  for (size_t r = 0; r < runs.size(); ++r) {
    const HeadRun& run = runs[r];
    const int64_t first_q = run.begin * group;  // first query head of the run
    AttentionParams p;
    p.heads = dev.table(r);
    // q, out: [hq, items, D]; tail: [hkv, tail_tokens, D] (dense on the device).
    p.q = dq.as<float>() + first_q * items * d;
    p.q_item_stride = d;
    p.q_head_stride = items * d;
    p.out = dout.as<float>() + first_q * items * d;
    p.out_item_stride = d;
    p.out_head_stride = items * d;
    p.tail_k = tk.as<float>() + run.begin * pq.tail_tokens * d;
    p.tail_v = tv.as<float>() + run.begin * pq.tail_tokens * d;
    p.tail_head_stride = pq.tail_tokens * d;
    p.tail_len = tl.as<int32_t>();
    p.items = items;
    p.num_heads = static_cast<int>((run.end - run.begin) * group);
    p.num_kv_heads = static_cast<int>(run.end - run.begin);
    p.head_dim = static_cast<int>(d);
    p.kbits = run.kbits;
    p.vbits = run.vbits;
    p.max_units = max_units;
    p.splits = splits[r];
    p.workspace = ws.as<float>();
    MOEND_CUDA_RETURN(LaunchAttention(p, nullptr));
  }
  MOEND_CUDA_RETURN(cudaMemcpy(out, dout.as<float>(), hq * items * d * sizeof(float), cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

}  // namespace moend::kernels::cuda

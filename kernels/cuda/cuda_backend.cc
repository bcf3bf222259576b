// Host glue of the CUDA backend: moves host data to the device, runs the
// kernels of kernels/cuda/*.cu and converts every cudaError_t into a Status.
#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/compression.h"
#include "core/status_macros.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/resident.h"
#include "kernels/cuda/schedule_launch.h"

namespace moend::kernels::cuda {
namespace {

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

// Uploads every cache into device memory, with no room to append.
absl::Status UploadAll(absl::Span<const CompressedLayer* const> caches,
                       std::vector<std::unique_ptr<DeviceLayerCache>>* dev) {
  for (const CompressedLayer* c : caches) {
    MOEND_ASSIGN_OR_RETURN(std::unique_ptr<DeviceLayerCache> d, DeviceLayerCache::Upload(*c, 0));
    dev->push_back(std::move(d));
  }
  return absl::OkStatus();
}

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
  DeviceArray q, k, ws, scores;
  MOEND_RETURN_IF_ERROR(q.Reserve(x.num_heads * w * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(k.Reserve(x.num_kv_heads * c * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(ws.Reserve(
      ScoreWorkspaceFloats(x.num_heads, x.num_kv_heads, w, c) * sizeof(float)));
  MOEND_RETURN_IF_ERROR(scores.Reserve(x.num_kv_heads * cand * sizeof(float)));
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
  DeviceArray s, idx;
  MOEND_RETURN_IF_ERROR(s.Reserve(scores.score.size() * sizeof(float)));
  MOEND_RETURN_IF_ERROR(idx.Reserve(scores.num_kv_heads * kept * sizeof(int32_t)));
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
  DeviceArray k, v, idx, kc, ks, km, vc, vs, vm, wk, wv;
  MOEND_RETURN_IF_ERROR(k.Reserve(hkv * c * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(v.Reserve(hkv * c * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(idx.Reserve(hkv * m * sizeof(int32_t)));
  MOEND_RETURN_IF_ERROR(kc.Reserve(hkv * m * krow));
  MOEND_RETURN_IF_ERROR(ks.Reserve(kpar * 2));
  MOEND_RETURN_IF_ERROR(km.Reserve(kpar * 2));
  MOEND_RETURN_IF_ERROR(vc.Reserve(hkv * m * vrow));
  MOEND_RETURN_IF_ERROR(vs.Reserve(vpar * 2));
  MOEND_RETURN_IF_ERROR(vm.Reserve(vpar * 2));
  MOEND_RETURN_IF_ERROR(wk.Reserve(hkv * w * d * 2));
  MOEND_RETURN_IF_ERROR(wv.Reserve(hkv * w * d * 2));
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

// The host-data entry point: upload into resident caches, plan, run (the one
// path of kernels/cuda/resident.h), then copy the result back.
absl::Status DecodeAttention(absl::Span<const CompressedLayer* const> caches, const float* q, int64_t num_heads,
                             float* out) {
  const int64_t items = static_cast<int64_t>(caches.size()), d = caches[0]->format().head_dim;
  std::vector<std::unique_ptr<DeviceLayerCache>> dev;
  MOEND_RETURN_IF_ERROR(UploadAll(caches, &dev));
  std::vector<const DeviceLayerCache*> views;
  for (const auto& c : dev) views.push_back(c.get());
  MOEND_ASSIGN_OR_RETURN(DecodePlan plan, PlanDecode(views, num_heads));
  DeviceArray dq, dout;
  MOEND_RETURN_IF_ERROR(dq.Reserve(items * num_heads * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(dout.Reserve(items * num_heads * d * sizeof(float)));
  MOEND_CUDA_RETURN(cudaMemcpy(dq.as<float>(), q, items * num_heads * d * sizeof(float), cudaMemcpyHostToDevice));
  MOEND_RETURN_IF_ERROR(RunDecode(plan, views, dq.as<float>(), dout.as<float>(), nullptr));
  MOEND_CUDA_RETURN(cudaMemcpy(out, dout.as<float>(), items * num_heads * d * sizeof(float),
                               cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

// Every query is an item over the one prefix (its table repeats the prefix's
// views), with its own causal count of tail rows.
absl::Status ProbeAttention(const CompressedLayer& prefix, const ProbeQueries& pq, float* out) {
  const LayerFormat& f = prefix.format();
  const int items = static_cast<int>(pq.num_queries);
  const int64_t d = f.head_dim, hkv = f.num_kv_heads, hq = pq.num_heads;
  const int64_t q_stride = pq.q_head_stride ? pq.q_head_stride : pq.num_queries;
  const int64_t t_stride = pq.tail_head_stride ? pq.tail_head_stride : pq.tail_tokens;
  MOEND_ASSIGN_OR_RETURN(std::unique_ptr<DeviceLayerCache> dev, DeviceLayerCache::Upload(prefix, 0));
  std::vector<int32_t> tail_len(items);
  for (int i = 0; i < items; ++i) tail_len[i] = static_cast<int32_t>(pq.query_offset + i + 1);
  const int tail_units = static_cast<int>((tail_len.back() + 31) / 32);
  DecodeBatchShape shape;
  shape.num_heads = hq;
  shape.sequences.assign(items, dev->Shape());
  shape.tail_units = tail_units;
  MOEND_ASSIGN_OR_RETURN(DecodeSchedule s, ScheduleDecode(shape, DeviceSplitPolicy()));
  std::vector<const DeviceLayerCache*> repeated(items, dev.get());
  std::vector<HeadCacheView> table;
  std::vector<int> max_units;
  BuildViewTable(s, repeated, tail_units, &table, &max_units);
  DeviceArray dtable, dq, dout, ws, tk, tv, tl;
  MOEND_RETURN_IF_ERROR(dtable.Reserve(table.size() * sizeof(HeadCacheView)));
  MOEND_RETURN_IF_ERROR(dq.Reserve(hq * items * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(dout.Reserve(hq * items * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(ws.Reserve(s.workspace_floats * sizeof(float)));
  MOEND_RETURN_IF_ERROR(tk.Reserve(hkv * pq.tail_tokens * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(tv.Reserve(hkv * pq.tail_tokens * d * sizeof(float)));
  MOEND_RETURN_IF_ERROR(tl.Reserve(items * sizeof(int32_t)));
  MOEND_CUDA_RETURN(cudaMemcpy(dtable.as<HeadCacheView>(), table.data(), table.size() * sizeof(HeadCacheView),
                               cudaMemcpyHostToDevice));
  MOEND_RETURN_IF_ERROR(UploadRows(pq.q, hq, q_stride, items, d, dq.as<float>()));
  MOEND_RETURN_IF_ERROR(UploadRows(pq.k_tail, hkv, t_stride, pq.tail_tokens, d, tk.as<float>()));
  MOEND_RETURN_IF_ERROR(UploadRows(pq.v_tail, hkv, t_stride, pq.tail_tokens, d, tv.as<float>()));
  MOEND_CUDA_RETURN(cudaMemcpy(tl.as<int32_t>(), tail_len.data(), items * sizeof(int32_t), cudaMemcpyHostToDevice));
  // q, out: [hq, items, D]; tail: [hkv, tail_tokens, D] (dense on the device).
  ScheduleIo io;
  io.q = dq.as<float>();
  io.q_item_stride = d;
  io.q_head_stride = items * d;
  io.out = dout.as<float>();
  io.out_item_stride = d;
  io.out_head_stride = items * d;
  io.tail_k = tk.as<float>();
  io.tail_v = tv.as<float>();
  io.tail_head_stride = pq.tail_tokens * d;
  io.tail_len = tl.as<int32_t>();
  MOEND_RETURN_IF_ERROR(LaunchSchedule(s, dtable.as<HeadCacheView>(), max_units, io, ws.as<float>(), nullptr));
  MOEND_CUDA_RETURN(cudaMemcpy(out, dout.as<float>(), hq * items * d * sizeof(float), cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

}  // namespace moend::kernels::cuda

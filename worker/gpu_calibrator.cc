// Host side of the GPU calibrator: buffers, the per-layer schedule and the
// cuBLAS calls. Every cudaError_t / cublasStatus_t becomes an absl::Status.
#include "worker/gpu_calibrator.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/compression.h"
#include "core/status_macros.h"
#include "kernels/backend.h"
#include "kernels/cuda/launch.h"
#include "worker/cuda_util.h"
#include "worker/gpu_calibrator_kernels.h"

namespace moend::worker {
namespace {

using kernels::LayerTensors;

int64_t RoundUp(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The tuples of one keep ratio: K bits (descending, so that (1,16) comes
// first) and V bits; tuple[i][j] is the options.tuples index of
// (keep, kbits[i], vbits[j]) or -1 when that pair is not in the grid.
struct KeepPlan {
  double keep = 1.0;
  int64_t kept = 0;
  std::vector<int> kbits, vbits;
  std::vector<int> group;  // global (keep, K bits) index of kbits[i]
  std::vector<std::vector<int64_t>> tuple;
  int64_t rows = 0, rpad = 0;          // kept + window, rounded up to 64
  int64_t k_offset = 0, v_offset = 0;  // this keep's dense K / V in k_dense / v_all (elements)
};

constexpr int kMaxVSlots = 4;

}  // namespace

struct GpuCalibrator::Impl {
  GpuCalibratorOptions options;
  cudaStream_t stream = nullptr;  // probe attention and merges
  cudaStream_t prep = nullptr;    // scores, selection, quantization, dequantization
  cudaEvent_t inputs_ready = nullptr;
  std::vector<cudaEvent_t> keep_ready;
  cublasHandle_t blas = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  cudaEvent_t phase[4] = {nullptr, nullptr, nullptr, nullptr};  // profile mode
  int sms = kernels::cuda::kFallbackSmCount;  // the device's, set by Create
  GpuCalibratorStats stats;

  // Inputs (host entry copies into these; device entry copies q only).
  DeviceArray k_in, v_in;
  DeviceArray q_window, q_probe32, q_probe16;
  // Scores and selection.
  DeviceArray score_ws, scores, index;
  // Tail partial.
  DeviceArray tail_s, tail_max, tail_sum, tail_o;
  // Packed output of the quantizer for one bit width.
  DeviceArray k_codes, k_scale, k_min, v_codes, v_scale, v_min, window_k, window_v;
  // Dense fp16 operands and the per-(keep, K bits) work arrays.
  DeviceArray k_dense, v_all, p, o, part_max, part_sum, offset_ref, offset_tmp, ref;
  // err: per KV head h, at h * (err slots + 1): the error sums of every
  // (group, V slot), then the reference norm.
  DeviceArray err, flags;

  ~Impl() {
    if (blas != nullptr) cublasDestroy(blas);
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
    if (inputs_ready != nullptr) cudaEventDestroy(inputs_ready);
    for (cudaEvent_t e : phase) {
      if (e != nullptr) cudaEventDestroy(e);
    }
    for (cudaEvent_t e : keep_ready) cudaEventDestroy(e);
    if (stream != nullptr) cudaStreamDestroy(stream);
    if (prep != nullptr) cudaStreamDestroy(prep);
  }

  // Shapes of the layer being measured.
  int64_t n = 0, probes = 0, c = 0, w = 0, cand = 0;
  int64_t hq = 0, hkv = 0, d = 0, group = 0, rows_per_kv = 0, rows_total = 0, rpad_max = 0;
  const float* k = nullptr;  // device [hkv, kv_stride floats]
  const float* v = nullptr;
  int64_t kv_stride = 0;

  absl::Status Reserve(int64_t num_groups, int64_t k_dense_elems, int64_t v_all_elems) {
    const int64_t groups32 = CeilDiv(cand, 32);
    MOEND_RETURN_IF_ERROR(q_window.Reserve(hq * w * d * 4));
    MOEND_RETURN_IF_ERROR(q_probe32.Reserve(rows_total * d * 4));
    MOEND_RETURN_IF_ERROR(q_probe16.Reserve(rows_total * d * 2));
    MOEND_RETURN_IF_ERROR(score_ws.Reserve(
        kernels::cuda::ScoreWorkspaceFloats(static_cast<int>(hq), static_cast<int>(hkv), static_cast<int>(w),
                                            static_cast<int>(c)) * 4));
    MOEND_RETURN_IF_ERROR(scores.Reserve(hkv * cand * 4));
    MOEND_RETURN_IF_ERROR(index.Reserve(hkv * cand * 4));
    MOEND_RETURN_IF_ERROR(tail_s.Reserve(rows_total * probes * 4));
    MOEND_RETURN_IF_ERROR(tail_max.Reserve(rows_total * 4));
    MOEND_RETURN_IF_ERROR(tail_sum.Reserve(rows_total * 4));
    MOEND_RETURN_IF_ERROR(tail_o.Reserve(rows_total * d * 4));
    MOEND_RETURN_IF_ERROR(k_codes.Reserve(hkv * cand * d * 2));
    MOEND_RETURN_IF_ERROR(k_scale.Reserve(hkv * groups32 * d * 2));
    MOEND_RETURN_IF_ERROR(k_min.Reserve(hkv * groups32 * d * 2));
    MOEND_RETURN_IF_ERROR(v_codes.Reserve(hkv * cand * d * 2));
    MOEND_RETURN_IF_ERROR(v_scale.Reserve(hkv * cand * (d / 32) * 2));
    MOEND_RETURN_IF_ERROR(v_min.Reserve(hkv * cand * (d / 32) * 2));
    MOEND_RETURN_IF_ERROR(window_k.Reserve(hkv * w * d * 2));
    MOEND_RETURN_IF_ERROR(window_v.Reserve(hkv * w * d * 2));
    MOEND_RETURN_IF_ERROR(k_dense.Reserve(k_dense_elems * 2));
    MOEND_RETURN_IF_ERROR(v_all.Reserve(v_all_elems * 2));
    MOEND_RETURN_IF_ERROR(p.Reserve(hkv * rows_per_kv * rpad_max * 2));
    MOEND_RETURN_IF_ERROR(o.Reserve(rows_total * kMaxVSlots * d * 4));
    MOEND_RETURN_IF_ERROR(part_max.Reserve(rpad_max / 64 * rows_total * 4));
    MOEND_RETURN_IF_ERROR(part_sum.Reserve(rpad_max / 64 * rows_total * 4));
    MOEND_RETURN_IF_ERROR(offset_ref.Reserve(rows_total * 4));
    MOEND_RETURN_IF_ERROR(offset_tmp.Reserve(rows_total * 4));
    MOEND_RETURN_IF_ERROR(ref.Reserve(rows_total * d * 4));
    MOEND_RETURN_IF_ERROR(err.Reserve(hkv * (num_groups * kMaxVSlots + 1) * 8));
    MOEND_RETURN_IF_ERROR(flags.Reserve(num_groups * 4));
    return absl::OkStatus();
  }

  // The uncompressed tail's partial (fp32, cuBLAS SGEMM): once per layer.
  absl::Status Tail() {
    const float scale = 1.0f / std::sqrt(static_cast<float>(d)), one = 1.0f, zero = 0.0f;
    const int P = static_cast<int>(probes), D = static_cast<int>(d), R = static_cast<int>(rows_per_kv);
    // s[r, j] = scale * q[r] . k_tail[j], per KV head over its group's rows.
    MOEND_CUBLAS_RETURN(cublasSgemmStridedBatched(blas, CUBLAS_OP_T, CUBLAS_OP_N, P, R, D, &scale, k + c * d, D,
                                                  kv_stride, q_probe32.as<float>(), D, rows_per_kv * d, &zero,
                                                  tail_s.as<float>(), P, rows_per_kv * probes,
                                                  static_cast<int>(hkv)));
    MOEND_CUDA_RETURN(gpucal::LaunchTailSoftmax(tail_s.as<float>(), static_cast<int>(rows_total), P,
                                                tail_max.as<float>(), tail_sum.as<float>(), stream));
    // o[r, :] = sum_j p[r, j] v_tail[j, :].
    MOEND_CUBLAS_RETURN(cublasSgemmStridedBatched(blas, CUBLAS_OP_N, CUBLAS_OP_N, D, R, P, &one, v + c * d, D,
                                                  kv_stride, tail_s.as<float>(), P, rows_per_kv * probes, &zero,
                                                  tail_o.as<float>(), D, rows_per_kv * d, static_cast<int>(hkv)));
    return absl::OkStatus();
  }

  absl::Status Scores() {
    if (cand == 0) return absl::OkStatus();
    kernels::cuda::ScoreParams sp;
    sp.q = q_window.as<float>();
    sp.k = k;
    sp.k_head_stride = kv_stride;
    sp.num_heads = static_cast<int>(hq);
    sp.num_kv_heads = static_cast<int>(hkv);
    sp.head_dim = static_cast<int>(d);
    sp.prefix = static_cast<int>(c);
    sp.window = static_cast<int>(w);
    sp.workspace = score_ws.as<float>();
    sp.scores = scores.as<float>();
    MOEND_CUDA_RETURN(kernels::cuda::LaunchScores(sp, prep));
    return absl::OkStatus();
  }

  // One keep's operands on the prep stream: selection, then per bit width the
  // quantizer and the dequantizer into this keep's dense K (one array per K
  // bits) and V (the V bits side by side).
  absl::Status Prep(const KeepPlan& kp) {
    const int64_t m = kp.kept, rpad = kp.rpad;
    const int D = static_cast<int>(d), H = static_cast<int>(hkv);
    if (m == cand) {  // every candidate kept, in order
      MOEND_CUDA_RETURN(gpucal::LaunchIota(index.as<int32_t>(), H, static_cast<int>(m), prep));
    } else if (m > 0) {
      kernels::cuda::SelectParams sel;
      sel.scores = scores.as<float>();
      sel.num_kv_heads = H;
      sel.candidates = static_cast<int>(cand);
      sel.kept = static_cast<int>(m);
      sel.index = index.as<int32_t>();
      MOEND_CUDA_RETURN(kernels::cuda::LaunchSelect(sel, prep));
    }
    const int nv = static_cast<int>(kp.vbits.size());
    std::map<int, std::pair<int, int>, std::greater<>> bits;  // bits -> (K slot or -1, V slot or -1)
    for (size_t i = 0; i < kp.kbits.size(); ++i) bits[kp.kbits[i]] = {static_cast<int>(i), -1};
    for (int j = 0; j < nv; ++j) {
      auto it = bits.find(kp.vbits[j]);
      if (it == bits.end()) {
        bits[kp.vbits[j]] = {-1, j};
      } else {
        it->second.second = j;
      }
    }
    for (const auto& [b, slots] : bits) {
      kernels::cuda::QuantizeParams qp;
      qp.k = k;
      qp.v = v;
      qp.head_stride = kv_stride;
      qp.index = index.as<int32_t>();
      qp.num_kv_heads = H;
      qp.head_dim = D;
      qp.kept = static_cast<int>(m);
      qp.prefix = static_cast<int>(c);
      qp.window = static_cast<int>(w);
      qp.kbits = qp.vbits = b;
      qp.k_codes = k_codes.as<uint8_t>();
      qp.k_scale = k_scale.as<uint16_t>();
      qp.k_min = k_min.as<uint16_t>();
      qp.v_codes = v_codes.as<uint8_t>();
      qp.v_scale = v_scale.as<uint16_t>();
      qp.v_min = v_min.as<uint16_t>();
      qp.window_k = window_k.as<uint16_t>();
      qp.window_v = window_v.as<uint16_t>();
      MOEND_CUDA_RETURN(kernels::cuda::LaunchQuantize(qp, prep));
      gpucal::DequantParams dp;
      dp.k_codes = qp.k_codes;
      dp.k_scale = qp.k_scale;
      dp.k_min = qp.k_min;
      dp.v_codes = qp.v_codes;
      dp.v_scale = qp.v_scale;
      dp.v_min = qp.v_min;
      dp.window_k = qp.window_k;
      dp.window_v = qp.window_v;
      dp.num_kv_heads = H;
      dp.head_dim = D;
      dp.kept = static_cast<int>(m);
      dp.window = static_cast<int>(w);
      dp.rpad = static_cast<int>(rpad);
      dp.bits = b;
      dp.k_out = slots.first >= 0 ? k_dense.as<uint16_t>() + kp.k_offset + slots.first * hkv * rpad * d : nullptr;
      dp.v_out = slots.second >= 0 ? v_all.as<uint16_t>() + kp.v_offset : nullptr;
      dp.v_cols = nv * D;
      dp.v_col0 = std::max(slots.second, 0) * D;
      MOEND_CUDA_RETURN(gpucal::LaunchDequant(dp, prep));
    }
    return absl::OkStatus();
  }

  // For each K bits i of one keep with run[i]: probe scores and P, P V for all
  // V bits, merge + error (stream `stream`; the keep's Prep must be done).
  absl::Status Groups(const KeepPlan& kp, const std::vector<bool>& run, const std::vector<bool>& exact) {
    const int64_t rows = kp.rows, rpad = kp.rpad;
    const int D = static_cast<int>(d), H = static_cast<int>(hkv);
    const int nv = static_cast<int>(kp.vbits.size());
    // Key splits: about 4 blocks per multiprocessor.
    const int64_t row_tiles = CeilDiv(rows_per_kv, gpucal::ProbeRowTile()) * hkv;
    const int64_t want = std::max<int64_t>(1, CeilDiv(4 * sms, row_tiles));
    const int64_t per_split = RoundUp(CeilDiv(rows, want), 64);
    const int64_t splits = CeilDiv(rows, per_split);
    const float scale = 1.0f / std::sqrt(static_cast<float>(d)), one = 1.0f, zero = 0.0f;
    for (size_t i = 0; i < kp.kbits.size(); ++i) {
      if (!run[i]) continue;
      const bool is_ref = kp.keep == 1.0 && kp.kbits[i] == kFp16Bits;
      gpucal::ProbeScoreParams sp;
      sp.q = q_probe16.as<uint16_t>();
      sp.k = k_dense.as<uint16_t>() + kp.k_offset + static_cast<int64_t>(i) * hkv * rpad * d;
      sp.num_kv_heads = H;
      sp.head_dim = D;
      sp.rows_per_kv = static_cast<int>(rows_per_kv);
      sp.keys = static_cast<int>(rows);
      sp.rpad = static_cast<int>(rpad);
      sp.splits = static_cast<int>(splits);
      sp.keys_per_split = static_cast<int>(per_split);
      sp.scale = scale;
      sp.part_max = part_max.as<float>();
      sp.part_sum = part_sum.as<float>();
      sp.p = p.as<uint16_t>();
      float* offset = offset_ref.as<float>();
      MOEND_RETURN_IF_ERROR(Mark(0, stream));
      if (is_ref || exact[i]) {
        if (!is_ref) offset = offset_tmp.as<float>();
        sp.write_p = false;
        MOEND_CUDA_RETURN(gpucal::LaunchProbeScores(sp, stream));
        MOEND_CUDA_RETURN(gpucal::LaunchReduceMax(part_max.as<float>(), static_cast<int>(splits),
                                                  static_cast<int>(rows_total), offset, stream));
      }
      sp.write_p = true;
      sp.offset = offset;
      MOEND_CUDA_RETURN(gpucal::LaunchProbeScores(sp, stream));
      MOEND_RETURN_IF_ERROR(Mark(1, stream));
      // o[r, :] = p[r, :] v_all for all V bits at once, per KV head.
      const int64_t cols = nv * d;
      MOEND_CUBLAS_RETURN(cublasGemmStridedBatchedEx(
          blas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(cols), static_cast<int>(rows_per_kv),
          static_cast<int>(rpad), &one, v_all.as<uint16_t>() + kp.v_offset, CUDA_R_16F, static_cast<int>(cols), rpad * cols,
          p.as<uint16_t>(), CUDA_R_16F, static_cast<int>(rpad), rows_per_kv * rpad, &zero, o.as<float>(),
          CUDA_R_32F, static_cast<int>(cols), rows_per_kv * cols, H, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      MOEND_RETURN_IF_ERROR(Mark(2, stream));
      gpucal::MergeParams mp;
      mp.o = o.as<float>();
      mp.o_cols = static_cast<int>(cols);
      mp.nv = nv;
      mp.offset = offset;
      mp.part_max = part_max.as<float>();
      mp.part_sum = part_sum.as<float>();
      mp.splits = static_cast<int>(splits);
      mp.tail_max = tail_max.as<float>();
      mp.tail_sum = tail_sum.as<float>();
      mp.tail_o = tail_o.as<float>();
      mp.ref = ref.as<float>();
      mp.rows_total = static_cast<int>(rows_total);
      mp.rows_per_kv = static_cast<int>(rows_per_kv);
      mp.head_dim = D;
      mp.err = err.as<double>();
      mp.err_base = kp.group[i] * kMaxVSlots;
      mp.err_stride = static_cast<int>(err_slots_ + 1);
      mp.norm = err.as<double>() + err_slots_;
      mp.flag = flags.as<unsigned>() + kp.group[i];
      if (is_ref) {
        const auto j16 = std::find(kp.vbits.begin(), kp.vbits.end(), kFp16Bits) - kp.vbits.begin();
        mp.ref_slot = static_cast<int>(j16);
        MOEND_CUDA_RETURN(gpucal::LaunchMerge(mp, stream));
        mp.ref_slot = -1;
      }
      MOEND_CUDA_RETURN(gpucal::LaunchMerge(mp, stream));
      if (options.profile) {
        MOEND_RETURN_IF_ERROR(Mark(3, stream));
        MOEND_ASSIGN_OR_RETURN(const double a, Elapsed(0, 1));
        MOEND_ASSIGN_OR_RETURN(const double b, Elapsed(1, 2));
        MOEND_ASSIGN_OR_RETURN(const double c3, Elapsed(2, 3));
        stats.score_ms += a;
        stats.gemm_ms += b;
        stats.merge_ms += c3;
      }
    }
    return absl::OkStatus();
  }

  int64_t err_slots_ = 0;

  // Profile mode: phase i starts at record(i); Elapsed(a, b) after a sync.
  absl::Status Mark(int i, cudaStream_t on) {
    if (!options.profile) return absl::OkStatus();
    MOEND_CUDA_RETURN(cudaEventRecord(phase[i], on));
    return absl::OkStatus();
  }
  absl::StatusOr<double> Elapsed(int a, int b) {
    MOEND_CUDA_RETURN(cudaEventSynchronize(phase[b]));
    float ms = 0;
    MOEND_CUDA_RETURN(cudaEventElapsedTime(&ms, phase[a], phase[b]));
    return static_cast<double>(ms);
  }

  // q_window / q_probe32 are filled and k/v set by the caller. per_head as in
  // worker::MeasureLayer.
  absl::StatusOr<std::vector<double>> Run(const CalibrationOptions& options,
                                          std::vector<std::vector<double>>* per_head) {
    // Plan: keeps descending, K bits descending (the reference (1,16) first).
    std::map<double, std::map<int, std::map<int, size_t>, std::greater<>>, std::greater<>> grid;
    for (size_t i = 0; i < options.tuples.size(); ++i) {
      const CompressionTuple& t = options.tuples[i];
      grid[t.keep][t.kbits][t.vbits] = i;
    }
    std::vector<KeepPlan> plans;
    int groups = 0;
    for (const auto& [keep, by_kbits] : grid) {
      KeepPlan kp;
      kp.keep = keep;
      kp.kept = KeptTokens(keep, c);
      std::map<int, int, std::greater<>> vset;
      for (const auto& [kb, by_vbits] : by_kbits) {
        for (const auto& [vb, index] : by_vbits) vset[vb] = 0;
      }
      for (auto& [vb, j] : vset) {
        j = static_cast<int>(kp.vbits.size());
        kp.vbits.push_back(vb);
      }
      for (const auto& [kb, by_vbits] : by_kbits) {
        kp.kbits.push_back(kb);
        kp.group.push_back(groups++);
        std::vector<int64_t> row(kp.vbits.size(), -1);
        for (const auto& [vb, index] : by_vbits) row[static_cast<size_t>(vset[vb])] = static_cast<int64_t>(index);
        kp.tuple.push_back(std::move(row));
      }
      plans.push_back(std::move(kp));
    }
    err_slots_ = groups * kMaxVSlots;
    int64_t k_elems = 0, v_elems = 0;
    for (KeepPlan& kp : plans) {
      kp.rows = kp.kept + w;
      kp.rpad = RoundUp(kp.rows, 64);
      kp.k_offset = k_elems;
      kp.v_offset = v_elems;
      k_elems += static_cast<int64_t>(kp.kbits.size()) * hkv * kp.rpad * d;
      v_elems += hkv * kp.rpad * static_cast<int64_t>(kp.vbits.size()) * d;
    }
    MOEND_RETURN_IF_ERROR(Reserve(groups, k_elems, v_elems));
    while (keep_ready.size() < plans.size()) {
      cudaEvent_t e = nullptr;
      MOEND_CUDA_RETURN(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      keep_ready.push_back(e);
    }
    const int64_t err_stride = err_slots_ + 1;  // doubles per KV head
    MOEND_CUDA_RETURN(cudaMemsetAsync(err.as<double>(), 0, hkv * err_stride * 8, stream));
    MOEND_CUDA_RETURN(cudaMemsetAsync(flags.as<unsigned>(), 0, groups * 4, stream));
    MOEND_CUDA_RETURN(gpucal::LaunchProbeQueriesToHalf(q_probe32.as<float>(), probes * d, static_cast<int>(hq),
                                                       static_cast<int>(probes), static_cast<int>(d),
                                                       q_probe16.as<uint16_t>(), stream));
    // The prep stream (scores, then each keep's operands) runs ahead of the
    // probe attention, which waits for each keep's operands.
    MOEND_CUDA_RETURN(cudaEventRecord(inputs_ready, stream));
    MOEND_CUDA_RETURN(cudaStreamWaitEvent(prep, inputs_ready, 0));
    stats = GpuCalibratorStats{};
    MOEND_RETURN_IF_ERROR(Mark(0, prep));
    // Keep 1 (first) needs no scores: its operands go first, the scores after.
    bool scored = false;
    for (size_t i = 0; i < plans.size(); ++i) {
      if (!scored && plans[i].kept < cand) {
        MOEND_RETURN_IF_ERROR(Scores());
        scored = true;
      }
      MOEND_RETURN_IF_ERROR(Prep(plans[i]));
      MOEND_CUDA_RETURN(cudaEventRecord(keep_ready[i], prep));
    }
    if (this->options.profile) {  // serialized: prep, then tail
      MOEND_RETURN_IF_ERROR(Mark(1, prep));
      MOEND_ASSIGN_OR_RETURN(stats.prep_ms, Elapsed(0, 1));
      MOEND_RETURN_IF_ERROR(Mark(0, stream));
    }
    MOEND_RETURN_IF_ERROR(Tail());
    if (this->options.profile) {
      MOEND_RETURN_IF_ERROR(Mark(1, stream));
      MOEND_ASSIGN_OR_RETURN(stats.tail_ms, Elapsed(0, 1));
    }
    for (size_t i = 0; i < plans.size(); ++i) {
      const KeepPlan& kp = plans[i];
      MOEND_CUDA_RETURN(cudaStreamWaitEvent(stream, keep_ready[i], 0));
      MOEND_RETURN_IF_ERROR(Groups(kp, std::vector<bool>(kp.kbits.size(), true),
                                   std::vector<bool>(kp.kbits.size(), this->options.exact_row_max)));
    }
    std::vector<double> sums(static_cast<size_t>(hkv * err_stride));
    std::vector<unsigned> flag(static_cast<size_t>(groups));
    auto download = [&]() -> absl::Status {
      MOEND_CUDA_RETURN(cudaMemcpyAsync(sums.data(), err.as<double>(), sums.size() * 8, cudaMemcpyDeviceToHost,
                                        stream));
      MOEND_CUDA_RETURN(cudaMemcpyAsync(flag.data(), flags.as<unsigned>(), flag.size() * 4, cudaMemcpyDeviceToHost,
                                        stream));
      MOEND_CUDA_RETURN(cudaStreamSynchronize(stream));
      return absl::OkStatus();
    };
    MOEND_RETURN_IF_ERROR(download());
    // Recompute the (keep, K bits) groups whose one-pass offset was off.
    bool redo = false;
    for (const KeepPlan& kp : plans) {
      std::vector<bool> run(kp.kbits.size(), false);
      bool any = false;
      for (size_t i = 0; i < kp.kbits.size(); ++i) {
        if (flag[static_cast<size_t>(kp.group[i])] != 0) {
          run[i] = any = true;
          ++stats.fallback_groups;
          MOEND_CUDA_RETURN(cudaMemset2DAsync(err.as<double>() + kp.group[i] * kMaxVSlots, err_stride * 8, 0,
                                              kMaxVSlots * 8, hkv, stream));
        }
      }
      if (any) {
        redo = true;
        MOEND_RETURN_IF_ERROR(Groups(kp, run, run));
      }
    }
    MOEND_CUDA_RETURN(cudaEventRecord(stop, stream));
    if (redo) MOEND_RETURN_IF_ERROR(download());
    MOEND_CUDA_RETURN(cudaEventSynchronize(stop));
    float ms = 0;
    MOEND_CUDA_RETURN(cudaEventElapsedTime(&ms, start, stop));
    stats.total_ms = ms;

    // The layer's sums are the heads' sums added in head order.
    auto at = [&](int64_t h, int64_t slot) { return sums[static_cast<size_t>(h * err_stride + slot)]; };
    double norm = 0;
    for (int64_t h = 0; h < hkv; ++h) norm += at(h, err_slots_);
    std::vector<double> result(options.tuples.size(), 0.0);
    std::vector<std::vector<double>> head_result(static_cast<size_t>(hkv),
                                                 std::vector<double>(options.tuples.size(), 0.0));
    for (const KeepPlan& kp : plans) {
      for (size_t i = 0; i < kp.kbits.size(); ++i) {
        for (size_t j = 0; j < kp.vbits.size(); ++j) {
          const int64_t t = kp.tuple[i][j];
          if (t < 0) continue;
          const int64_t slot = kp.group[i] * kMaxVSlots + static_cast<int64_t>(j);
          double e = 0;
          for (int64_t h = 0; h < hkv; ++h) {
            const double head_err = at(h, slot), head_norm = at(h, err_slots_);
            e += head_err;
            head_result[static_cast<size_t>(h)][static_cast<size_t>(t)] =
                head_norm > 0 ? head_err / head_norm : 0.0;
          }
          result[static_cast<size_t>(t)] = norm > 0 ? e / norm : 0.0;
        }
      }
    }
    if (per_head != nullptr) *per_head = std::move(head_result);
    return result;
  }

  // Shapes + validation shared by both entries; x's pointers are not read.
  absl::Status SetShape(const LayerTensors& x, const CalibrationOptions& o) {
    MOEND_RETURN_IF_ERROR(ValidateCalibrationOptions(o));
    n = x.tokens;
    probes = o.probe_tokens;
    c = n - probes;
    if (c < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence of ", n, " tokens is too short for ", probes, " probe queries"));
    }
    MOEND_RETURN_IF_ERROR(kernels::ValidateLayerTensors(x, c));
    if (x.q == nullptr) return absl::InvalidArgumentError("q is null");
    w = WindowTokens(c);
    cand = CandidateTokens(c);
    hq = x.num_heads;
    hkv = x.num_kv_heads;
    d = x.head_dim;
    group = hq / hkv;
    rows_per_kv = group * probes;
    rows_total = hq * probes;
    rpad_max = RoundUp(c, 64);
    kv_stride = n * d;
    return absl::OkStatus();
  }
};

GpuCalibrator::GpuCalibrator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuCalibrator::~GpuCalibrator() = default;

absl::StatusOr<std::unique_ptr<GpuCalibrator>> GpuCalibrator::Create(GpuCalibratorOptions options) {
  if (!kernels::CudaDeviceAvailable()) {
    return absl::FailedPreconditionError(
        absl::StrCat("GPU calibrator: ", kernels::CudaUnavailableReason()));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  int dev = 0;
  MOEND_CUDA_RETURN(cudaGetDevice(&dev));
  MOEND_CUDA_RETURN(cudaDeviceGetAttribute(&impl->sms, cudaDevAttrMultiProcessorCount, dev));
  MOEND_CUDA_RETURN(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
  MOEND_CUDA_RETURN(cudaStreamCreateWithFlags(&impl->prep, cudaStreamNonBlocking));
  MOEND_CUDA_RETURN(cudaEventCreateWithFlags(&impl->inputs_ready, cudaEventDisableTiming));
  for (cudaEvent_t& e : impl->phase) MOEND_CUDA_RETURN(cudaEventCreate(&e));
  MOEND_CUDA_RETURN(cudaEventCreate(&impl->start));
  MOEND_CUDA_RETURN(cudaEventCreate(&impl->stop));
  MOEND_CUBLAS_RETURN(cublasCreate(&impl->blas));
  MOEND_CUBLAS_RETURN(cublasSetStream(impl->blas, impl->stream));
  // Full fp32 SGEMM for the tail (no TF32); fp16 GemmEx still uses tensor cores.
  MOEND_CUBLAS_RETURN(cublasSetMathMode(impl->blas, CUBLAS_DEFAULT_MATH));
  return std::unique_ptr<GpuCalibrator>(new GpuCalibrator(std::move(impl)));
}

absl::StatusOr<std::vector<double>> GpuCalibrator::MeasureLayer(const LayerTensors& x,
                                                                const CalibrationOptions& options,
                                                                std::vector<std::vector<double>>* per_head) {
  Impl& m = *impl_;
  MOEND_RETURN_IF_ERROR(m.SetShape(x, options));
  const int64_t d = m.d;
  MOEND_RETURN_IF_ERROR(m.k_in.Reserve(m.hkv * m.n * d * 4));
  MOEND_RETURN_IF_ERROR(m.v_in.Reserve(m.hkv * m.n * d * 4));
  MOEND_RETURN_IF_ERROR(m.q_window.Reserve(m.hq * m.w * d * 4));
  MOEND_RETURN_IF_ERROR(m.q_probe32.Reserve(m.rows_total * d * 4));
  MOEND_CUDA_RETURN(cudaEventRecord(m.start, m.stream));
  MOEND_CUDA_RETURN(cudaMemcpyAsync(m.k_in.as<float>(), x.k, m.hkv * m.n * d * 4, cudaMemcpyHostToDevice, m.stream));
  MOEND_CUDA_RETURN(cudaMemcpyAsync(m.v_in.as<float>(), x.v, m.hkv * m.n * d * 4, cudaMemcpyHostToDevice, m.stream));
  MOEND_CUDA_RETURN(cudaMemcpy2DAsync(m.q_window.as<float>(), m.w * d * 4, x.q + (m.c - m.w) * d, m.n * d * 4,
                                      m.w * d * 4, m.hq, cudaMemcpyHostToDevice, m.stream));
  MOEND_CUDA_RETURN(cudaMemcpy2DAsync(m.q_probe32.as<float>(), m.probes * d * 4, x.q + m.c * d, m.n * d * 4,
                                      m.probes * d * 4, m.hq, cudaMemcpyHostToDevice, m.stream));
  m.k = m.k_in.as<float>();
  m.v = m.v_in.as<float>();
  return m.Run(options, per_head);
}

absl::StatusOr<std::vector<double>> GpuCalibrator::MeasureDeviceLayer(const LayerTensors& x,
                                                                      const CalibrationOptions& options,
                                                                      std::vector<std::vector<double>>* per_head) {
  Impl& m = *impl_;
  MOEND_RETURN_IF_ERROR(m.SetShape(x, options));
  const int64_t d = m.d;
  MOEND_RETURN_IF_ERROR(m.q_window.Reserve(m.hq * m.w * d * 4));
  MOEND_RETURN_IF_ERROR(m.q_probe32.Reserve(m.rows_total * d * 4));
  MOEND_CUDA_RETURN(cudaEventRecord(m.start, m.stream));
  MOEND_CUDA_RETURN(cudaMemcpy2DAsync(m.q_window.as<float>(), m.w * d * 4, x.q + (m.c - m.w) * d, m.n * d * 4,
                                      m.w * d * 4, m.hq, cudaMemcpyDeviceToDevice, m.stream));
  MOEND_CUDA_RETURN(cudaMemcpy2DAsync(m.q_probe32.as<float>(), m.probes * d * 4, x.q + m.c * d, m.n * d * 4,
                                      m.probes * d * 4, m.hq, cudaMemcpyDeviceToDevice, m.stream));
  m.k = x.k;
  m.v = x.v;
  return m.Run(options, per_head);
}

const GpuCalibratorStats& GpuCalibrator::last_stats() const { return impl_->stats; }

absl::StatusOr<std::vector<double>> MeasureLayerOnGpu(const LayerTensors& x, const CalibrationOptions& options,
                                                      std::vector<std::vector<double>>* per_head) {
  static std::mutex mu;
  static std::unique_ptr<GpuCalibrator> shared;
  std::lock_guard<std::mutex> lock(mu);
  if (shared == nullptr) {
    MOEND_ASSIGN_OR_RETURN(shared, GpuCalibrator::Create());
  }
  return shared->MeasureLayer(x, options, per_head);
}

}  // namespace moend::worker

// Times the GPU calibrator's 112-tuple grid for one layer (DESIGN.md section
// 2, "Sensitivity"), the work calibration_peer.py does in PyTorch:
//   device:  activations already on the GPU ("activations given"), the
//            number compared with the peer;
//   host:    worker::MeasureLayer's CUDA branch from host arrays (adds the
//            upload of q/k/v), what CalibrateLayers pays per layer after its
//            CPU forward.
// Wall clock around each synchronous call, median of --reps after 2 warm-ups.
//   calibration_gpu_bench [--reps 10] [--exact] [--profile]
// Prints one RESULT line per shape and entry.
//
// End to end (--model): worker::CalibrateLayers on the CUDA backend over
// --samples sequences of --seq-len tokens from --data (bytes or token ids,
// runtime/token_file.h), every layer, the full default grid: GPU forward
// (worker/gpu_model.h, --gpu-forward bf16 (default) or fp32) + GPU
// calibrator, after one warm-up sequence (CUDA context, module loading). Then
// the same work as an explicit loop over the first --split-samples sequences
// (default: all) to split it into GpuModel creation, forward (and its
// attention) and grid time; --compare-fp32 also calibrates with the fp32
// forward and prints how far the table moves (Spearman, relative
// differences); --cpu-samples N (default 2; 0 skips) times the previous path,
// CPU forward + GPU grid from host arrays, on N sequences.
//   calibration_gpu_bench --model DIR --data FILE [--samples 16] [--seq-len 4096] [--cpu-samples 2]
//                         [--gpu-forward bf16|fp32] [--split-samples N] [--compare-fp32]
// Prints RESULT e2e (and RESULT agreement, RESULT e2e_cpu_forward). Device
// memory is the device-wide use (cudaMemGetInfo) at its highest, read after
// every sequence while the GpuModel and calibrator hold their buffers.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/model.h"
#include "core/sensitivity_table.h"
#include "kernels/backend.h"
#include "kernels/cuda/launch.h"
#include "worker/calibrator.h"
#include "worker/gpu_calibrator.h"
#include "worker/gpu_model.h"

namespace {

using moend::kernels::LayerTensors;
using moend::worker::CalibrationOptions;
using moend::worker::GpuCalibrator;

struct Shape {
  const char* name;
  int64_t heads, kv_heads, dim, tokens;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename F>
double TimeMs(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

int Run(const Shape& s, int reps, bool exact, bool profile) {
  const int64_t nq = s.heads * s.tokens * s.dim, nkv = s.kv_heads * s.tokens * s.dim;
  float *q = nullptr, *k = nullptr, *v = nullptr;
  if (cudaMalloc(&q, nq * 4) != cudaSuccess || cudaMalloc(&k, nkv * 4) != cudaSuccess ||
      cudaMalloc(&v, nkv * 4) != cudaSuccess) {
    std::fprintf(stderr, "cudaMalloc failed\n");
    return 1;
  }
  // Uniform in [-1.73, 1.73]: unit variance, like the peer's randn.
  moend::kernels::cuda::LaunchFillFloat(q, nq, -1.73f, 1.73f, 1, nullptr);
  moend::kernels::cuda::LaunchFillFloat(k, nkv, -1.73f, 1.73f, 2, nullptr);
  moend::kernels::cuda::LaunchFillFloat(v, nkv, -1.73f, 1.73f, 3, nullptr);
  cudaDeviceSynchronize();
  LayerTensors dx{q, k, v, s.heads, s.kv_heads, s.tokens, s.dim};
  CalibrationOptions o;  // the 112-tuple grid, 256 probes
  auto cal = GpuCalibrator::Create({.exact_row_max = exact, .profile = profile});
  if (!cal.ok()) {
    std::fprintf(stderr, "%s\n", cal.status().ToString().c_str());
    return 1;
  }
  std::vector<double> wall, dev;
  absl::StatusOr<std::vector<double>> res;
  for (int i = 0; i < reps + 2; ++i) {
    const double ms = TimeMs([&] { res = (*cal)->MeasureDeviceLayer(dx, o); });
    if (!res.ok()) {
      std::fprintf(stderr, "%s\n", res.status().ToString().c_str());
      return 1;
    }
    if (i >= 2) {
      wall.push_back(ms);
      dev.push_back((*cal)->last_stats().total_ms);
    }
  }
  std::printf("RESULT gpu entry=device shape=%s tokens=%lld heads=%lld kv_heads=%lld dim=%lld tuples=%zu "
              "ms=%.2f device_ms=%.2f fallback_groups=%d exact=%d\n",
              s.name, static_cast<long long>(s.tokens), static_cast<long long>(s.heads),
              static_cast<long long>(s.kv_heads), static_cast<long long>(s.dim), res->size(), Median(wall),
              Median(dev), (*cal)->last_stats().fallback_groups, exact ? 1 : 0);
  auto at = [&](double keep, int kb, int vb) {
    for (size_t i = 0; i < o.tuples.size(); ++i)
      if (o.tuples[i] == moend::CompressionTuple{keep, kb, vb}) return (*res)[i];
    return -1.0;
  };
  if (profile) {
    const auto& st = (*cal)->last_stats();
    std::printf("PROFILE shape=%s prep_ms=%.2f tail_ms=%.2f score_ms=%.2f gemm_ms=%.2f merge_ms=%.2f\n", s.name,
                st.prep_ms, st.tail_ms, st.score_ms, st.gemm_ms, st.merge_ms);
    return 0;
  }
  std::printf("sample s: (0.5,4,4) %.3e (0.25,2,2) %.3e (1,8,8) %.3e\n", at(0.5, 4, 4), at(0.25, 2, 2),
              at(1.0, 8, 8));

  // Host entry (upload included).
  std::vector<float> hq(nq), hk(nkv), hv(nkv);
  cudaMemcpy(hq.data(), q, nq * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(hk.data(), k, nkv * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(hv.data(), v, nkv * 4, cudaMemcpyDeviceToHost);
  LayerTensors hx{hq.data(), hk.data(), hv.data(), s.heads, s.kv_heads, s.tokens, s.dim};
  std::vector<double> host;
  for (int i = 0; i < reps + 2; ++i) {
    const double ms = TimeMs([&] { res = (*cal)->MeasureLayer(hx, o); });
    if (!res.ok()) {
      std::fprintf(stderr, "%s\n", res.status().ToString().c_str());
      return 1;
    }
    if (i >= 2) host.push_back(ms);
  }
  std::printf("RESULT gpu entry=host shape=%s tokens=%lld ms=%.2f exact=%d\n", s.name,
              static_cast<long long>(s.tokens), Median(host), exact ? 1 : 0);
  cudaFree(q);
  cudaFree(k);
  cudaFree(v);
  return 0;
}

struct EndToEnd {
  std::string model_dir, data;
  int64_t samples = 16;
  int64_t seq_len = 4096;
  int64_t cpu_samples = 2;
  int64_t split_samples = -1;  // all
  moend::worker::GpuForwardPrecision forward = moend::worker::GpuForwardPrecision::kBf16;
  bool compare_fp32 = false;
};

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Device-wide memory in use now, GiB.
double UsedGib() {
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) return -1;
  return static_cast<double>(total - free) / (1 << 30);
}

const char* Name(moend::worker::GpuForwardPrecision p) {
  return p == moend::worker::GpuForwardPrecision::kBf16 ? "bf16" : "fp32";
}

int RunEndToEnd(const EndToEnd& e) {
  using Clock = std::chrono::steady_clock;
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  };
  const double context_gib = UsedGib();
  auto t0 = Clock::now();
  auto model = moend::Model::Load(e.model_dir);
  if (!model.ok()) return fail(model.status());
  const double load_s = Seconds(t0);
  const moend::ModelConfig& cfg = (*model)->config();
  auto seqs = moend::worker::LoadCalibrationSequences(e.data, e.seq_len, 0, e.samples, cfg.vocab_size);
  if (!seqs.ok()) return fail(seqs.status());
  const int64_t layers = cfg.num_layers;
  CalibrationOptions o;  // the 112-tuple grid, 256 probes
  o.backend = moend::kernels::Backend::kCuda;
  o.gpu_forward = e.forward;
  double peak_gib = 0;
  auto track_memory = [&](int64_t, int64_t) { peak_gib = std::max(peak_gib, UsedGib()); };

  // Warm-up: one sequence (CUDA context, cuBLAS and module loading).
  t0 = Clock::now();
  auto warm = moend::worker::CalibrateLayers(**model, std::span(seqs->data(), 1), 0, layers, o);
  if (!warm.ok()) return fail(warm.status());
  const double cold_s = Seconds(t0);

  // The headline: CalibrateLayers end to end (GpuModel and calibrator creation included).
  t0 = Clock::now();
  auto e2e = moend::worker::CalibrateLayers(**model, *seqs, 0, layers, o, track_memory);
  if (!e2e.ok()) return fail(e2e.status());
  const double total_s = Seconds(t0);

  // The same work split up on the first `split` sequences: creation, then per
  // sequence the forward with the grid timed inside the layer callback
  // (MeasureDeviceLayer is synchronous) and the attention by CUDA events.
  const int64_t split = e.split_samples < 0 ? e.samples : std::min(e.split_samples, e.samples);
  t0 = Clock::now();
  auto gpu_model = moend::worker::GpuModel::Create(**model, {.precision = e.forward, .profile = true});
  if (!gpu_model.ok()) return fail(gpu_model.status());
  const double create_s = Seconds(t0);
  auto cal = GpuCalibrator::Create();
  if (!cal.ok()) return fail(cal.status());
  std::vector<std::vector<double>> sum(static_cast<size_t>(layers), std::vector<double>(o.tuples.size(), 0.0));
  double grid_s = 0, attention_s = 0;
  t0 = Clock::now();
  for (int64_t i = 0; i < split; ++i) {
    absl::Status st = (*gpu_model)->Prefill((*seqs)[static_cast<size_t>(i)], layers,
                                            [&](const moend::LayerActivations& a) -> absl::Status {
      LayerTensors x{a.q, a.k, a.v, cfg.num_heads, cfg.num_kv_heads, a.tokens, cfg.head_dim};
      const auto g0 = Clock::now();
      auto s = (*cal)->MeasureDeviceLayer(x, o);
      grid_s += Seconds(g0);
      if (!s.ok()) return s.status();
      for (size_t t = 0; t < s->size(); ++t) sum[static_cast<size_t>(a.layer)][t] += (*s)[t] / split;
      return absl::OkStatus();
    });
    if (!st.ok()) return fail(st);
    attention_s += (*gpu_model)->last_stats().attention_ms / 1e3;
    track_memory(0, 0);
  }
  const double loop_s = Seconds(t0);
  const double per = static_cast<double>(split);
  std::printf("RESULT e2e model=%s forward=%s samples=%lld seq_len=%lld layers=%lld tuples=%zu load_s=%.2f "
              "total_s=%.3f per_sample_s=%.3f create_s=%.3f split_samples=%lld forward_per_sample_s=%.3f "
              "attention_per_sample_s=%.3f grid_per_sample_s=%.3f cold_first_sample_s=%.3f peak_gpu_gib=%.2f "
              "context_gib=%.2f\n",
              (*model)->name().c_str(), Name(e.forward), static_cast<long long>(e.samples),
              static_cast<long long>(e.seq_len), static_cast<long long>(layers), o.tuples.size(), load_s, total_s,
              total_s / static_cast<double>(e.samples), create_s, static_cast<long long>(split),
              (loop_s - grid_s) / per, attention_s / per, grid_s / per, cold_s, peak_gib, context_gib);
  if (split == e.samples) {
    auto check = moend::CompareSensitivities(sum, *e2e);
    if (!check.ok()) return fail(check.status());
    std::printf("e2e check: split loop vs CalibrateLayers worst relative difference %.3g\n", check->worst_relative);
  }

  if (e.compare_fp32 && e.forward != moend::worker::GpuForwardPrecision::kFloat32) {
    CalibrationOptions o32 = o;
    o32.gpu_forward = moend::worker::GpuForwardPrecision::kFloat32;
    t0 = Clock::now();
    auto fp32 = moend::worker::CalibrateLayers(**model, *seqs, 0, layers, o32);
    if (!fp32.ok()) return fail(fp32.status());
    const double fp32_s = Seconds(t0);
    // All entries, and those with s above 1e-6 (a 0.1% output error), the
    // ones a plan trades: the tiny 8-bit errors move most.
    auto agree = moend::CompareSensitivities(*e2e, *fp32);
    auto above = moend::CompareSensitivities(*e2e, *fp32, 1e-6);
    if (!agree.ok()) return fail(agree.status());
    if (!above.ok()) return fail(above.status());
    auto where = [&](const moend::SensitivityAgreement& a) {
      return a.worst_tuple < 0 ? std::string("-")
                               : absl::StrCat(a.worst_layer, ":",
                                              moend::ToString(o.tuples[static_cast<size_t>(a.worst_tuple)]));
    };
    std::printf("RESULT agreement model=%s forward=%s reference=fp32 entries=%lld spearman=%.6f median_rel=%.4g "
                "worst_rel=%.4g worst_at=%s worst_rel_above_1e-6=%.4g worst_above_at=%s fp32_total_s=%.3f\n",
                (*model)->name().c_str(), Name(e.forward), static_cast<long long>(agree->entries), agree->spearman,
                agree->median_relative, agree->worst_relative, where(*agree).c_str(), above->worst_relative,
                where(*above).c_str(), fp32_s);
  }

  // The previous path: CPU forward, grid on the GPU from host arrays.
  if (e.cpu_samples > 0) {
    const int64_t n = std::min(e.cpu_samples, e.samples);
    double cpu_grid_s = 0;
    t0 = Clock::now();
    for (int64_t i = 0; i < n; ++i) {
      absl::Status error;
      auto logits = (*model)->Forward((*seqs)[static_cast<size_t>(i)], [&](const moend::LayerActivations& a) {
        LayerTensors x{a.q, a.k, a.v, cfg.num_heads, cfg.num_kv_heads, a.tokens, cfg.head_dim};
        const auto g0 = Clock::now();
        auto s = moend::worker::MeasureLayer(x, o);
        cpu_grid_s += Seconds(g0);
        if (!s.ok() && error.ok()) error = s.status();
      });
      if (!logits.ok()) return fail(logits.status());
      if (!error.ok()) return fail(error);
    }
    const double cpu_total_s = Seconds(t0);
    std::printf("RESULT e2e_cpu_forward model=%s samples=%lld seq_len=%lld per_sample_s=%.3f "
                "forward_per_sample_s=%.3f grid_per_sample_s=%.3f projected_total_s=%.2f\n",
                (*model)->name().c_str(), static_cast<long long>(n), static_cast<long long>(e.seq_len),
                cpu_total_s / n, (cpu_total_s - cpu_grid_s) / n, cpu_grid_s / n, cpu_total_s / n * e.samples);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 10;
  bool exact = false;
  bool profile = false;
  EndToEnd e2e;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--profile") == 0) {
      profile = true;
    } else if (std::strcmp(argv[i], "--exact") == 0) {
      exact = true;
    } else if (std::strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
      e2e.model_dir = argv[++i];
    } else if (std::strcmp(argv[i], "--data") == 0 && i + 1 < argc) {
      e2e.data = argv[++i];
    } else if (std::strcmp(argv[i], "--samples") == 0 && i + 1 < argc) {
      e2e.samples = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--seq-len") == 0 && i + 1 < argc) {
      e2e.seq_len = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--cpu-samples") == 0 && i + 1 < argc) {
      e2e.cpu_samples = std::max(0, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--split-samples") == 0 && i + 1 < argc) {
      e2e.split_samples = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--gpu-forward") == 0 && i + 1 < argc &&
               (std::strcmp(argv[i + 1], "bf16") == 0 || std::strcmp(argv[i + 1], "fp32") == 0)) {
      e2e.forward = std::strcmp(argv[++i], "bf16") == 0 ? moend::worker::GpuForwardPrecision::kBf16
                                                        : moend::worker::GpuForwardPrecision::kFloat32;
    } else if (std::strcmp(argv[i], "--compare-fp32") == 0) {
      e2e.compare_fp32 = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--reps N] [--exact] [--profile]\n"
                   "       %s --model DIR --data FILE [--samples 16] [--seq-len 4096] [--cpu-samples 2]\n"
                   "          [--gpu-forward bf16|fp32] [--split-samples N] [--compare-fp32]\n",
                   argv[0], argv[0]);
      return 2;
    }
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  std::printf("device: %s\n", prop.name);
  if (!e2e.model_dir.empty() || !e2e.data.empty()) {
    if (e2e.model_dir.empty() || e2e.data.empty()) {
      std::fprintf(stderr, "--model and --data go together\n");
      return 2;
    }
    return RunEndToEnd(e2e);
  }
  const Shape shapes[] = {{"7b", 28, 4, 128, 16384}, {"shipped", 4, 2, 64, 4096}};
  for (const Shape& s : shapes) {
    if (int rc = Run(s, reps, exact, profile); rc != 0) return rc;
  }
  return 0;
}

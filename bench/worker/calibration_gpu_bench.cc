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
// --samples sequences of --seq-len tokens from --data, every layer, the full
// default grid: GPU forward (worker/gpu_model.h) + GPU calibrator, after one
// warm-up sequence (CUDA context, module loading). Then the same work as an
// explicit loop to split it into GpuModel creation, forward and grid time,
// and (--cpu-samples N, default 2; 0 skips) the previous path, CPU forward +
// GPU grid from host arrays, on N sequences.
//   calibration_gpu_bench --model DIR --data FILE [--samples 16] [--seq-len 4096] [--cpu-samples 2]
// Prints RESULT e2e (and RESULT e2e_cpu_forward).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "core/model.h"
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
};

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// max over (layer, tuple) of |a - b| / b (b > 0).
double WorstRelative(const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b) {
  double worst = 0;
  for (size_t l = 0; l < b.size(); ++l)
    for (size_t t = 0; t < b[l].size(); ++t)
      if (b[l][t] > 0) worst = std::max(worst, std::fabs(a[l][t] - b[l][t]) / b[l][t]);
  return worst;
}

int RunEndToEnd(const EndToEnd& e) {
  using Clock = std::chrono::steady_clock;
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  };
  auto model = moend::Model::Load(e.model_dir);
  if (!model.ok()) return fail(model.status());
  auto seqs = moend::worker::LoadCalibrationSequences(e.data, e.seq_len, 0, e.samples);
  if (!seqs.ok()) return fail(seqs.status());
  const moend::ModelConfig& cfg = (*model)->config();
  const int64_t layers = cfg.num_layers;
  CalibrationOptions o;  // the 112-tuple grid, 256 probes
  o.backend = moend::kernels::Backend::kCuda;

  // Warm-up: one sequence (CUDA context, cuBLAS and module loading).
  auto t0 = Clock::now();
  auto warm = moend::worker::CalibrateLayers(**model, std::span(seqs->data(), 1), 0, layers, o);
  if (!warm.ok()) return fail(warm.status());
  const double cold_s = Seconds(t0);

  // The headline: CalibrateLayers end to end (GpuModel and calibrator creation included).
  t0 = Clock::now();
  auto e2e = moend::worker::CalibrateLayers(**model, *seqs, 0, layers, o);
  if (!e2e.ok()) return fail(e2e.status());
  const double total_s = Seconds(t0);

  // The same work split up: creation, then per sequence the forward with the
  // grid timed inside the layer callback (MeasureDeviceLayer is synchronous).
  t0 = Clock::now();
  auto gpu_model = moend::worker::GpuModel::Create(**model);
  if (!gpu_model.ok()) return fail(gpu_model.status());
  const double create_s = Seconds(t0);
  auto cal = GpuCalibrator::Create();
  if (!cal.ok()) return fail(cal.status());
  std::vector<std::vector<double>> sum(static_cast<size_t>(layers), std::vector<double>(o.tuples.size(), 0.0));
  double grid_s = 0;
  t0 = Clock::now();
  for (const std::vector<int32_t>& seq : *seqs) {
    absl::Status st = (*gpu_model)->Prefill(seq, layers, [&](const moend::LayerActivations& a) -> absl::Status {
      LayerTensors x{a.q, a.k, a.v, cfg.num_heads, cfg.num_kv_heads, a.tokens, cfg.head_dim};
      const auto g0 = Clock::now();
      auto s = (*cal)->MeasureDeviceLayer(x, o);
      grid_s += Seconds(g0);
      if (!s.ok()) return s.status();
      for (size_t t = 0; t < s->size(); ++t) sum[static_cast<size_t>(a.layer)][t] += (*s)[t] / e.samples;
      return absl::OkStatus();
    });
    if (!st.ok()) return fail(st);
  }
  const double loop_s = Seconds(t0);
  std::printf("RESULT e2e model=%s samples=%lld seq_len=%lld layers=%lld tuples=%zu total_s=%.3f "
              "create_s=%.4f forward_s=%.3f grid_s=%.3f cold_first_sample_s=%.3f\n",
              (*model)->name().c_str(), static_cast<long long>(e.samples), static_cast<long long>(e.seq_len),
              static_cast<long long>(layers), o.tuples.size(), total_s, create_s, loop_s - grid_s, grid_s,
              cold_s);
  std::printf("e2e check: split loop vs CalibrateLayers worst relative difference %.3g; s(0.5,4,4) of layer 0 "
              "%.3e\n",
              WorstRelative(sum, *e2e), [&] {
                for (size_t t = 0; t < o.tuples.size(); ++t)
                  if (o.tuples[t] == moend::CompressionTuple{0.5, 4, 4}) return (*e2e)[0][t];
                return -1.0;
              }());

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
    } else {
      std::fprintf(stderr,
                   "usage: %s [--reps N] [--exact] [--profile]\n"
                   "       %s --model DIR --data FILE [--samples 16] [--seq-len 4096] [--cpu-samples 2]\n",
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

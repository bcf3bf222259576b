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
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/launch.h"
#include "worker/calibrator.h"
#include "worker/gpu_calibrator.h"

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

}  // namespace

int main(int argc, char** argv) {
  int reps = 10;
  bool exact = false;
  bool profile = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--profile") == 0) {
      profile = true;
    } else if (std::strcmp(argv[i], "--exact") == 0) {
      exact = true;
    } else {
      std::fprintf(stderr, "usage: %s [--reps N] [--exact] [--profile]\n", argv[0]);
      return 2;
    }
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  std::printf("device: %s\n", prop.name);
  const Shape shapes[] = {{"7b", 28, 4, 128, 16384}, {"shipped", 4, 2, 64, 4096}};
  for (const Shape& s : shapes) {
    if (int rc = Run(s, reps, exact, profile); rc != 0) return rc;
  }
  return 0;
}

// CPU (reference path) benchmark of the kernels: prefill compression (score +
// select + quantize) and decode attention over packed caches, 7B-shaped layer
// (28 query heads, 4 KV heads, head dim 128). Plain wall-clock medians.
//
// usage: kernels_cpu_bench [--quick]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "core/compression.h"
#include "kernels/attention.h"
#include "kernels/kv_compress.h"

namespace {

using moend::CompressionTuple;
namespace mk = moend::kernels;
using Clock = std::chrono::steady_clock;

constexpr int64_t kHq = 28, kHkv = 4, kD = 128;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename F>
double TimeMs(int reps, F&& f) {
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  return Median(ms);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int64_t n = quick ? 2048 : 8192;
  std::mt19937 rng(1);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> q(kHq * n * kD), k(kHkv * n * kD), v(kHkv * n * kD);
  for (float& x : q) x = g(rng);
  for (float& x : k) x = g(rng);
  for (float& x : v) x = g(rng);
  const mk::LayerTensors x{q.data(), k.data(), v.data(), kHq, kHkv, n, kD};
  const auto backend = mk::Backend::kReference;
  std::printf("CPU reference path, layer 28q/4kv/D128, prefix %lld tokens\n", static_cast<long long>(n));

  mk::EvictionScores scores;
  const double score_ms = TimeMs(3, [&] { scores = *mk::ComputeEvictionScores(x, n, backend); });
  std::printf("%-34s %10.2f ms\n", "score (32 window queries)", score_ms);
  for (const CompressionTuple& t : {CompressionTuple{0.5, 4, 4}, CompressionTuple{0.25, 2, 2}}) {
    mk::KeptSet kept;
    const double sel_ms = TimeMs(5, [&] { kept = *mk::SelectKept(scores, moend::KeptTokens(t.keep, n), backend); });
    const double q_ms = TimeMs(5, [&] { (void)*mk::QuantizeKept(x, kept, t.kbits, t.vbits, backend); });
    std::printf("select %-27s %10.2f ms\nquantize %-25s %10.2f ms\n", moend::ToString(t).c_str(), sel_ms,
                moend::ToString(t).c_str(), q_ms);
  }
  // A per-head layer (DESIGN.md section 2.9a), every KV head with its own
  // tuple: CompressHeads (each head quantized once, from a one-head view)
  // side by side with the way it was done before 2026-12-07 (the whole layer
  // selected and quantized once per distinct tuple, each head kept from its
  // tuple's result), from the same scores.
  {
    const std::vector<CompressionTuple> heads = {
        {0.5, 4, 4}, {0.25, 2, 2}, {0.125, 2, 4}, {0.75, 8, 4}};
    const double now_ms =
        TimeMs(5, [&] { (void)*mk::CompressHeads(x, n, heads, backend, &scores); });
    const double before_ms = TimeMs(5, [&] {
      for (const CompressionTuple& t : heads) {
        const mk::KeptSet kept = *mk::SelectKept(scores, moend::KeptTokens(t.keep, n), backend);
        (void)*mk::QuantizeKept(x, kept, t.kbits, t.vbits, backend);
      }
    });
    std::printf("%-34s %10.2f ms\n%-34s %10.2f ms  (%.2fx)\n", "per-head layer, CompressHeads",
                now_ms, "per-head layer, layer per tuple", before_ms, before_ms / now_ms);
  }
  for (const CompressionTuple& t : {CompressionTuple{1.0, 16, 16}, CompressionTuple{0.5, 4, 4},
                                    CompressionTuple{0.25, 2, 2}, CompressionTuple{0.125, 2, 2}}) {
    for (int batch : {1, 4}) {
      std::vector<mk::CompressedLayer> layers;
      for (int b = 0; b < batch; ++b) layers.push_back(*mk::CompressLayer(x, n, t, backend));
      std::vector<const mk::CompressedLayer*> ptrs;
      for (const auto& l : layers) ptrs.push_back(&l);
      std::vector<float> qd(batch * kHq * kD), out(qd.size());
      for (float& e : qd) e = g(rng);
      const double ms = TimeMs(5, [&] { (void)mk::DecodeAttention(ptrs, qd.data(), kHq, out.data(), backend); });
      const int64_t bytes = batch * moend::LayerBytes({kHkv, kD}, t, n);
      std::printf("decode batch %d %-20s %10.3f ms  %8.2f GB/s of cache\n", batch, moend::ToString(t).c_str(), ms,
                  bytes / (ms * 1e-3) / 1e9);
    }
  }
  return 0;
}

// The CPU attention kernel (kernels/cpu_attention.h) side by side, one decode
// step over every layer of a model, 4096-token contexts:
//   (a) the kernel over (0.25,2,2) caches
//   (b) the kernel over full fp16 caches (1,16,16)
//   (c) the reference DecodeAttention over the (0.25,2,2) caches
// Shapes: the shipped model (4 query heads, 2 KV heads, D 64, 12 layers) at
// batch 1 and 16, and a 7B-like layer stack (28 / 4 / D 128, 28 layers) at
// batch 1. Each layer and sequence has its own copy of the cache (so the
// step streams as many bytes as a real one). Wall-clock min and median over
// interleaved repetitions, and the median process CPU time; one RESULT line
// per shape (times and ratios of the wall minima, ratios of the wall medians
// and of the CPU-time medians).
//
// On a small shared machine run it with OMP_WAIT_POLICY=passive: with
// libgomp's default spin-wait, two threads on two busy vCPUs made every
// parallel region (kernel and reference alike) take ~11 ms.
//
// usage: cpu_attention_bench [--threads N (2)] [--reps N (9)] [--quick]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <vector>

#include "core/compression.h"
#include "kernels/attention.h"
#include "kernels/cpu_attention.h"
#include "kernels/kv_compress.h"

namespace {

using moend::CompressionTuple;
namespace mk = moend::kernels;
using Clock = std::chrono::steady_clock;

double CpuMs() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Shape {
  const char* name;
  int64_t hq, hkv, d, layers, batch;
};

// Caches of one tuple: [layers][batch] copies of one compressed layer
// (prefix `ctx - appended` tokens compressed, then `appended` decode tokens).
struct Stack {
  std::vector<mk::CompressedLayer> caches;       // [layers * batch]
  std::vector<std::vector<mk::HeadView>> views;  // [layers * batch][hkv]
  int64_t bytes = 0;                             // one step reads this much cache
};

Stack Build(const Shape& s, const CompressionTuple& t, int64_t ctx, int64_t appended) {
  std::mt19937 rng(1);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> q(s.hq * ctx * s.d), k(s.hkv * ctx * s.d), v(s.hkv * ctx * s.d);
  for (float& x : q) x = g(rng);
  for (float& x : k) x = g(rng);
  for (float& x : v) x = g(rng);
  const mk::LayerTensors x{q.data(), k.data(), v.data(), s.hq, s.hkv, ctx, s.d};
  const int64_t c = ctx - appended;
  auto layer = mk::CompressLayer(x, c, t, mk::Backend::kReference);
  if (!layer.ok()) {
    std::fprintf(stderr, "compress: %s\n", layer.status().ToString().c_str());
    std::exit(1);
  }
  if (!layer->Append(k.data() + c * s.d, v.data() + c * s.d, appended, ctx).ok()) std::exit(1);
  Stack st;
  st.caches.assign(s.layers * s.batch, *layer);
  for (const mk::CompressedLayer& l : st.caches) {
    std::vector<mk::HeadView> hv;
    for (int64_t h = 0; h < s.hkv; ++h) hv.push_back(l.View(h));
    st.views.push_back(std::move(hv));
    st.bytes += l.Bytes();
  }
  return st;
}

// One decode step over every layer with the CPU kernel.
void KernelStep(const Shape& s, const Stack& st, const std::vector<float>& q,
                std::vector<float>& out, mk::CpuIsa isa) {
  const int64_t row = s.hq * s.d;
  std::vector<mk::AttentionItem> items(s.batch);
  for (int64_t l = 0; l < s.layers; ++l) {
    for (int64_t b = 0; b < s.batch; ++b) {
      const auto& c = st.caches[l * s.batch + b];
      items[b].heads = st.views[l * s.batch + b].data();
      items[b].q = q.data() + (l * s.batch + b) * row;
      items[b].out = out.data() + (l * s.batch + b) * row;
      items[b].residual_visible = c.residual_tokens();
    }
    const absl::Status status = mk::CpuAttention(items, {s.hq, s.hkv, s.d}, isa);
    if (!status.ok()) {
      std::fprintf(stderr, "CpuAttention: %s\n", status.ToString().c_str());
      std::exit(1);
    }
  }
}

void ReferenceStep(const Shape& s, const Stack& st, const std::vector<float>& q,
                   std::vector<float>& out) {
  const int64_t row = s.hq * s.d;
  std::vector<const mk::CompressedLayer*> ptrs(s.batch);
  for (int64_t l = 0; l < s.layers; ++l) {
    for (int64_t b = 0; b < s.batch; ++b) ptrs[b] = &st.caches[l * s.batch + b];
    if (!mk::DecodeAttention(ptrs, q.data() + l * s.batch * row, s.hq,
                             out.data() + l * s.batch * row, mk::Backend::kReference)
             .ok()) {
      std::exit(1);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, reps = 9;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else {
      std::fprintf(stderr, "usage: %s [--threads N] [--reps N] [--quick]\n", argv[0]);
      return 2;
    }
  }
  omp_set_num_threads(threads);
  const int64_t ctx = quick ? 1024 : 4096, appended = 5;
  const mk::CpuIsa isa = mk::BestCpuIsa();
  std::printf("cpu_attention_bench: ISA %s, %d threads, context %lld (%lld decode tokens in the "
              "residual), %d repetitions\n",
              mk::CpuIsaName(isa).c_str(), threads, static_cast<long long>(ctx),
              static_cast<long long>(appended), reps);
  const CompressionTuple small{0.25, 2, 2}, full{1.0, 16, 16};
  for (const Shape& s : {Shape{"shipped", 4, 2, 64, 12, 1}, Shape{"shipped", 4, 2, 64, 12, 16},
                         Shape{"7b-like", 28, 4, 128, 28, 1}}) {
    std::mt19937 rng(7);
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::vector<float> q(s.layers * s.batch * s.hq * s.d), out(q.size());
    for (float& x : q) x = g(rng);
    const Stack sa = Build(s, small, ctx, appended);
    const Stack sb = Build(s, full, ctx, appended);
    // Interleaved (a, a portable, b, c per repetition) so that load from other
    // processes hits every variant alike; min and median of each.
    // Wall ms, and the process's CPU ms (all threads; less sensitive to other
    // processes taking the cores, but it counts OpenMP spin-waiting).
    std::vector<double> a, ap, b, c, a_cpu, b_cpu, c_cpu;
    auto once = [](auto&& f, std::vector<double>* cpu = nullptr) {
      const double c0 = CpuMs();
      const auto t0 = Clock::now();
      f();
      const double wall = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (cpu != nullptr) cpu->push_back(CpuMs() - c0);
      return wall;
    };
    KernelStep(s, sa, q, out, isa);  // warm-up
    KernelStep(s, sb, q, out, isa);
    for (int r = 0; r < reps; ++r) {
      a.push_back(once([&] { KernelStep(s, sa, q, out, isa); }, &a_cpu));
      ap.push_back(once([&] { KernelStep(s, sa, q, out, mk::CpuIsa::kPortable); }));
      b.push_back(once([&] { KernelStep(s, sb, q, out, isa); }, &b_cpu));
      c.push_back(once([&] { ReferenceStep(s, sa, q, out); }, &c_cpu));
    }
    const double a_min = *std::min_element(a.begin(), a.end());
    const double b_min = *std::min_element(b.begin(), b.end());
    const double c_min = *std::min_element(c.begin(), c.end());
    const double ap_min = *std::min_element(ap.begin(), ap.end());
    const double a_med = Median(a), b_med = Median(b), c_med = Median(c);
    const double ac = Median(a_cpu), bc = Median(b_cpu), cc = Median(c_cpu);
    std::printf("%s %lldq/%lldkv D%lld x%lld layers batch %lld, ms min/median: (a) kernel "
                "(0.25,2,2) %.3f/%.3f [%.2f GB/s of cache; portable %.3f]  (b) kernel (1,16,16) "
                "%.3f/%.3f [%.2f GB/s]  (c) reference (0.25,2,2) %.3f/%.3f\n",
                s.name, static_cast<long long>(s.hq), static_cast<long long>(s.hkv),
                static_cast<long long>(s.d), static_cast<long long>(s.layers),
                static_cast<long long>(s.batch), a_min, a_med,
                sa.bytes / (a_min * 1e-3) / 1e9, ap_min, b_min, b_med,
                sb.bytes / (b_min * 1e-3) / 1e9, c_min, c_med);
    std::printf("RESULT cpu_attention shape=%s batch=%lld ctx=%lld threads=%d isa=%s a_ms=%.3f "
                "b_ms=%.3f c_ms=%.3f a_portable_ms=%.3f b_over_a=%.2f c_over_a=%.1f "
                "median_b_over_a=%.2f median_c_over_a=%.1f a_cpu_ms=%.3f b_cpu_ms=%.3f "
                "c_cpu_ms=%.3f "
                "cpu_b_over_a=%.2f cpu_c_over_a=%.1f\n",
                s.name, static_cast<long long>(s.batch), static_cast<long long>(ctx), threads,
                mk::CpuIsaName(isa).c_str(), a_min, b_min, c_min, ap_min, b_min / a_min,
                c_min / a_min, b_med / a_med, c_med / a_med, ac, bc, cc, bc / ac, cc / ac);
    std::fflush(stdout);
  }
  return 0;
}

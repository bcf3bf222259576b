// GPU benchmark of the kernels: decode attention over packed compressed
// caches (random codes, realistic shapes) and prefill compression (score +
// select + quantize). Median of CUDA-event timings; inputs rotate over enough
// copies to exceed L2. Prints "RESULT ..." lines that sdpa_peer.py parses.
//
// usage: kernels_gpu_bench [--quick] [--batch 1,8] [--ctx 16384,65536,131072]
//                          [--splits 0,...] [--tuples 1/16/16,...] [--no-compress]
//   --batch, --ctx  decode cases to run (default: all of the lists shown)
//   --tuples        keep/kbits/vbits tuples to decode with (default: 1/16/16,
//                   0.5/4/4, 0.25/2/2, 0.125/2/2)
//   --splits        split-K factors to time each decode case with; 0 is
//                   AttentionSplits()' choice (default: 0 only)
//   --no-compress   skip the prefill compression benchmark
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "core/compression.h"
#include "kernels/cuda/launch.h"

namespace {

using moend::CompressionTuple;
using moend::KeptTokens;
namespace kc = moend::kernels::cuda;

#define CHECK_CUDA(expr)                                                                 \
  do {                                                                                   \
    const int e_ = static_cast<int>(expr);                                               \
    if (e_ != 0) {                                                                       \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(cudaError_t(e_)), \
                   __FILE__, __LINE__, #expr);                                           \
      return 1;                                                                          \
    }                                                                                    \
  } while (0)

constexpr int kHq = 28, kHkv = 4, kD = 128;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int64_t RowBytes(int bits) { return kD * bits / 8; }

// Device buffers of one batch of compressed caches (every (b, h) the same m).
struct Batch {
  std::vector<void*> allocs;
  kc::HeadCacheView* table = nullptr;
  int64_t bytes = 0;  // bytes of the caches (LayerBytes * batch)
};

void* Alloc(Batch& b, int64_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, std::max<int64_t>(bytes, 256)) != cudaSuccess) return nullptr;
  b.allocs.push_back(p);
  return p;
}

int MakeBatch(int batch, int64_t ctx, const CompressionTuple& t, uint64_t seed, Batch& out) {
  const int64_t m = KeptTokens(t.keep, ctx), w = 32, n = int64_t(batch) * kHkv;
  const int64_t groups = (m + 31) / 32;
  auto* kcodes = static_cast<uint8_t*>(Alloc(out, n * m * RowBytes(t.kbits)));
  auto* vcodes = static_cast<uint8_t*>(Alloc(out, n * m * RowBytes(t.vbits)));
  auto* kpar = static_cast<uint16_t*>(Alloc(out, n * groups * kD * 2 * 2));
  auto* vpar = static_cast<uint16_t*>(Alloc(out, n * m * (kD / 32) * 2 * 2));
  auto* win = static_cast<uint16_t*>(Alloc(out, n * w * kD * 2 * 2));
  if (!kcodes || !vcodes || !kpar || !vpar || !win) return 1;
  if (t.kbits == 16) {
    CHECK_CUDA(kc::LaunchFillHalf(reinterpret_cast<uint16_t*>(kcodes), n * m * kD, -1.f, 1.f, seed, nullptr));
  } else {
    CHECK_CUDA(kc::LaunchFillBytes(kcodes, n * m * RowBytes(t.kbits), seed, nullptr));
  }
  if (t.vbits == 16) {
    CHECK_CUDA(kc::LaunchFillHalf(reinterpret_cast<uint16_t*>(vcodes), n * m * kD, -1.f, 1.f, seed + 1, nullptr));
  } else {
    CHECK_CUDA(kc::LaunchFillBytes(vcodes, n * m * RowBytes(t.vbits), seed + 1, nullptr));
  }
  CHECK_CUDA(kc::LaunchFillHalf(kpar, n * groups * kD * 2, 0.001f, 0.05f, seed + 2, nullptr));
  CHECK_CUDA(kc::LaunchFillHalf(vpar, n * m * (kD / 32) * 2, 0.001f, 0.05f, seed + 3, nullptr));
  CHECK_CUDA(kc::LaunchFillHalf(win, n * w * kD * 2, -1.f, 1.f, seed + 4, nullptr));
  std::vector<kc::HeadCacheView> views(n);
  for (int64_t i = 0; i < n; ++i) {
    kc::HeadCacheView& v = views[i];
    v.k_codes = kcodes + i * m * RowBytes(t.kbits);
    v.v_codes = vcodes + i * m * RowBytes(t.vbits);
    v.k_scale = kpar + i * groups * kD * 2;
    v.k_min = v.k_scale + groups * kD;
    v.v_scale = vpar + i * m * (kD / 32) * 2;
    v.v_min = v.v_scale + m * (kD / 32);
    v.window_k = win + i * w * kD * 2;
    v.window_v = v.window_k + w * kD;
    v.initial_kept = static_cast<int32_t>(m);
    v.n_quant = static_cast<int32_t>(m);
    v.n_window = static_cast<int32_t>(w);
  }
  out.table = static_cast<kc::HeadCacheView*>(Alloc(out, n * sizeof(kc::HeadCacheView)));
  if (!out.table) return 1;
  CHECK_CUDA(cudaMemcpy(out.table, views.data(), n * sizeof(kc::HeadCacheView), cudaMemcpyHostToDevice));
  out.bytes = batch * moend::LayerBytes({kHkv, kD}, t, ctx);
  return 0;
}

void Free(Batch& b) {
  for (void* p : b.allocs) cudaFree(p);
  b.allocs.clear();
}

int BenchCopy(double* tbps) {
  const int64_t bytes = int64_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  CHECK_CUDA(cudaMemset(a, 1, bytes));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<double> ms;
  for (int i = 0; i < 12; ++i) {
    cudaEventRecord(e0);
    cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    CHECK_CUDA(cudaEventSynchronize(e1));
    float t = 0;
    cudaEventElapsedTime(&t, e0, e1);
    if (i >= 2) ms.push_back(t);
  }
  *tbps = 2.0 * bytes / (Median(ms) * 1e-3) / 1e12;
  cudaFree(a);
  cudaFree(b);
  return 0;
}

// splits_override > 0 replaces AttentionSplits()' choice.
int BenchDecode(int batch, int64_t ctx, const CompressionTuple& t, int iters, int splits_override) {
  // Enough copies that one pass over them exceeds the 50 MB L2 several times.
  Batch probe;
  const int64_t one = batch * moend::LayerBytes({kHkv, kD}, t, ctx);
  const int copies = static_cast<int>(std::clamp<int64_t>((256ll << 20) / std::max<int64_t>(one, 1) + 1, 1, 16));
  std::vector<Batch> batches(copies);
  for (int i = 0; i < copies; ++i) {
    if (MakeBatch(batch, ctx, t, 1000 + i * 17, batches[i]) != 0) {
      std::fprintf(stderr, "allocation failed for batch %d ctx %lld\n", batch, static_cast<long long>(ctx));
      return 1;
    }
  }
  const int64_t m = KeptTokens(t.keep, ctx);
  kc::HeadCacheView sample;
  sample.initial_kept = sample.n_quant = static_cast<int32_t>(m);
  sample.n_window = 32;
  const int max_units = kc::AttentionUnits(sample, 0);
  const int splits = splits_override > 0 ? splits_override : kc::AttentionSplits(batch, kHq, kHkv, max_units);
  float *q = nullptr, *out = nullptr, *ws = nullptr;
  CHECK_CUDA(cudaMalloc(&q, sizeof(float) * batch * kHq * kD));
  CHECK_CUDA(cudaMalloc(&out, sizeof(float) * batch * kHq * kD));
  CHECK_CUDA(cudaMalloc(&ws, sizeof(float) * kc::AttentionWorkspaceFloats(batch, kHq, kD, splits)));
  CHECK_CUDA(kc::LaunchFillFloat(q, int64_t(batch) * kHq * kD, -2.f, 2.f, 7, nullptr));
  kc::AttentionParams p;
  p.q = q;
  p.q_item_stride = kHq * kD;
  p.q_head_stride = kD;
  p.out = out;
  p.out_item_stride = kHq * kD;
  p.out_head_stride = kD;
  p.items = batch;
  p.num_heads = kHq;
  p.num_kv_heads = kHkv;
  p.head_dim = kD;
  p.kbits = t.kbits;
  p.vbits = t.vbits;
  p.max_units = max_units;
  p.splits = splits;
  p.workspace = ws;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<double> us;
  for (int i = 0; i < iters + 5; ++i) {
    p.heads = batches[i % copies].table;
    cudaEventRecord(e0);
    const int e = kc::LaunchAttention(p, nullptr);
    cudaEventRecord(e1);
    CHECK_CUDA(e);
    CHECK_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i >= 5) us.push_back(ms * 1e3);
  }
  std::vector<float> host(batch * kHq * kD);
  CHECK_CUDA(cudaMemcpy(host.data(), out, host.size() * 4, cudaMemcpyDeviceToHost));
  for (float x : host) {
    if (!std::isfinite(x)) {
      std::fprintf(stderr, "non-finite output\n");
      return 1;
    }
  }
  const double med = Median(us);
  // splits: the count used; asked: --splits' value (0 = AttentionSplits' choice).
  std::printf("RESULT decode batch=%d ctx=%lld tuple=%s us=%.2f bytes=%lld tbps=%.3f splits=%d asked=%d\n",
              batch, static_cast<long long>(ctx), moend::ToString(t).c_str(), med, static_cast<long long>(one),
              one / (med * 1e-6) / 1e12, splits, splits_override);
  std::fflush(stdout);
  cudaFree(q);
  cudaFree(out);
  cudaFree(ws);
  for (Batch& b : batches) Free(b);
  return 0;
}

// Score + select + quantize of a 16k prefill for one 7B-shaped layer.
int BenchCompress(int64_t c, const CompressionTuple& t, int layers) {
  const int64_t w = 32, cand = c - w, m = KeptTokens(t.keep, c), groups = (m + 31) / 32;
  float *q, *k, *v, *ws, *scores;
  int32_t* idx;
  uint8_t *kcodes, *vcodes;
  uint16_t *kpar, *vpar, *win;
  CHECK_CUDA(cudaMalloc(&q, sizeof(float) * kHq * w * kD));
  CHECK_CUDA(cudaMalloc(&k, sizeof(float) * kHkv * c * kD));
  CHECK_CUDA(cudaMalloc(&v, sizeof(float) * kHkv * c * kD));
  CHECK_CUDA(cudaMalloc(&ws, sizeof(float) * kc::ScoreWorkspaceFloats(kHq, kHkv, w, c)));
  CHECK_CUDA(cudaMalloc(&scores, sizeof(float) * kHkv * cand));
  CHECK_CUDA(cudaMalloc(&idx, sizeof(int32_t) * kHkv * m));
  CHECK_CUDA(cudaMalloc(&kcodes, kHkv * m * RowBytes(t.kbits)));
  CHECK_CUDA(cudaMalloc(&vcodes, kHkv * m * RowBytes(t.vbits)));
  CHECK_CUDA(cudaMalloc(&kpar, 2 * 2 * kHkv * groups * kD));
  CHECK_CUDA(cudaMalloc(&vpar, 2 * 2 * kHkv * m * (kD / 32)));
  CHECK_CUDA(cudaMalloc(&win, 2 * 2 * kHkv * w * kD));
  CHECK_CUDA(kc::LaunchFillFloat(q, kHq * w * kD, -1.f, 1.f, 1, nullptr));
  CHECK_CUDA(kc::LaunchFillFloat(k, kHkv * c * kD, -1.f, 1.f, 2, nullptr));
  CHECK_CUDA(kc::LaunchFillFloat(v, kHkv * c * kD, -1.f, 1.f, 3, nullptr));
  kc::ScoreParams sp;
  sp.q = q;
  sp.k = k;
  sp.k_head_stride = c * kD;
  sp.num_heads = kHq;
  sp.num_kv_heads = kHkv;
  sp.head_dim = kD;
  sp.prefix = static_cast<int>(c);
  sp.window = static_cast<int>(w);
  sp.workspace = ws;
  sp.scores = scores;
  kc::SelectParams se;
  se.scores = scores;
  se.num_kv_heads = kHkv;
  se.candidates = static_cast<int>(cand);
  se.kept = static_cast<int>(m);
  se.index = idx;
  kc::QuantizeParams qp;
  qp.k = k;
  qp.v = v;
  qp.head_stride = c * kD;
  qp.index = idx;
  qp.num_kv_heads = kHkv;
  qp.head_dim = kD;
  qp.kept = static_cast<int>(m);
  qp.prefix = static_cast<int>(c);
  qp.window = static_cast<int>(w);
  qp.kbits = t.kbits;
  qp.vbits = t.vbits;
  qp.k_codes = kcodes;
  qp.k_scale = kpar;
  qp.k_min = kpar + kHkv * groups * kD;
  qp.v_codes = vcodes;
  qp.v_scale = vpar;
  qp.v_min = vpar + kHkv * m * (kD / 32);
  qp.window_k = win;
  qp.window_v = win + kHkv * w * kD;
  cudaEvent_t e[4];
  for (auto& x : e) cudaEventCreate(&x);
  std::vector<double> score_us, select_us, quant_us, total_us;
  for (int i = 0; i < layers + 3; ++i) {
    cudaEventRecord(e[0]);
    CHECK_CUDA(kc::LaunchScores(sp, nullptr));
    cudaEventRecord(e[1]);
    CHECK_CUDA(kc::LaunchSelect(se, nullptr));
    cudaEventRecord(e[2]);
    CHECK_CUDA(kc::LaunchQuantize(qp, nullptr));
    cudaEventRecord(e[3]);
    CHECK_CUDA(cudaEventSynchronize(e[3]));
    float a, b, cq, tot;
    cudaEventElapsedTime(&a, e[0], e[1]);
    cudaEventElapsedTime(&b, e[1], e[2]);
    cudaEventElapsedTime(&cq, e[2], e[3]);
    cudaEventElapsedTime(&tot, e[0], e[3]);
    if (i >= 3) {
      score_us.push_back(a * 1e3);
      select_us.push_back(b * 1e3);
      quant_us.push_back(cq * 1e3);
      total_us.push_back(tot * 1e3);
    }
  }
  double sum = 0;
  for (double x : total_us) sum += x;
  std::printf(
      "RESULT compress ctx=%lld tuple=%s layers=%d score_us=%.1f select_us=%.1f quantize_us=%.1f "
      "layer_us=%.1f total_ms=%.3f\n",
      static_cast<long long>(c), moend::ToString(t).c_str(), layers, Median(score_us), Median(select_us),
      Median(quant_us), Median(total_us), sum * 1e-3);
  std::fflush(stdout);
  for (void* p : {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(v), static_cast<void*>(ws),
                  static_cast<void*>(scores), static_cast<void*>(idx), static_cast<void*>(kcodes),
                  static_cast<void*>(vcodes), static_cast<void*>(kpar), static_cast<void*>(vpar),
                  static_cast<void*>(win)}) {
    cudaFree(p);
  }
  return 0;
}

// "1,8" -> {1, 8}; false on anything but positive or zero integers.
bool ParseList(const char* s, std::vector<int64_t>* out) {
  out->clear();
  while (*s) {
    char* end = nullptr;
    const long long v = std::strtoll(s, &end, 10);
    if (end == s || v < 0 || (*end != ',' && *end != '\0')) return false;
    out->push_back(v);
    s = *end ? end + 1 : end;
  }
  return !out->empty();
}

// "0.25/2/2,1/16/16" -> tuples, each valid for the grid (core ValidateTuple).
bool ParseTuples(const char* s, std::vector<CompressionTuple>* out) {
  out->clear();
  for (absl::string_view item : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    const std::vector<absl::string_view> f = absl::StrSplit(item, '/');
    CompressionTuple t;
    if (f.size() != 3 || !absl::SimpleAtod(f[0], &t.keep) || !absl::SimpleAtoi(f[1], &t.kbits) ||
        !absl::SimpleAtoi(f[2], &t.vbits) || !moend::ValidateTuple(t).ok()) {
      return false;
    }
    out->push_back(t);
  }
  return !out->empty();
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, compress = true;
  std::vector<int64_t> batches = {1, 8}, contexts = {16384, 65536, 131072}, split_list = {0};
  std::vector<CompressionTuple> tuples = {{1.0, 16, 16}, {0.5, 4, 4}, {0.25, 2, 2}, {0.125, 2, 2}};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    std::vector<int64_t>* list = a == "--batch" ? &batches : a == "--ctx" ? &contexts : a == "--splits" ? &split_list
                                                                                                         : nullptr;
    if (a == "--quick") {
      quick = true;
    } else if (a == "--no-compress") {
      compress = false;
    } else if (list && i + 1 < argc && ParseList(argv[i + 1], list)) {
      ++i;
    } else if (a == "--tuples" && i + 1 < argc && ParseTuples(argv[i + 1], &tuples)) {
      ++i;
    } else {
      std::fprintf(stderr,
                   "bad argument '%s'; usage: kernels_gpu_bench [--quick] [--batch 1,8] [--ctx 16384,65536,131072] "
                   "[--splits 0,...] [--tuples 1/16/16,...] [--no-compress]\n",
                   argv[i]);
      return 2;
    }
  }
  for (int64_t b : batches) {
    if (b < 1 || b > 65535) {
      std::fprintf(stderr, "--batch %lld: need 1..65535\n", static_cast<long long>(b));
      return 2;
    }
  }
  for (int64_t c : contexts) {
    if (c <= 64) {
      std::fprintf(stderr, "--ctx %lld: need more than 64 tokens\n", static_cast<long long>(c));
      return 2;
    }
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  double copy = 0;
  if (BenchCopy(&copy) != 0) return 1;
  std::printf("RESULT device name=\"%s\" sms=%d copy_tbps=%.3f\n", prop.name, prop.multiProcessorCount, copy);
  const int iters = quick ? 10 : 50;
  for (int64_t batch : batches) {
    for (int64_t ctx : contexts) {
      for (const CompressionTuple& t : tuples) {
        for (int64_t splits : split_list) {
          if (BenchDecode(static_cast<int>(batch), ctx, t, iters, static_cast<int>(splits)) != 0) return 1;
        }
      }
    }
  }
  if (compress) {
    for (const CompressionTuple& t : {CompressionTuple{0.25, 2, 2}, CompressionTuple{0.5, 4, 4}}) {
      if (BenchCompress(16384, t, 28) != 0) return 1;
    }
  }
  return 0;
}

// The GPU calibrator against the CPU calibrator (worker::MeasureLayer on the
// reference backend, fp32 throughout).
//
// Tolerance: |s_gpu - s_cpu| <= 2e-2 * s_cpu + 1e-8. The GPU path rounds Q,
// the dequantized K/V and P to fp16 (fp32 accumulation). Rounding a
// dequantized 8-bit value to fp16 adds an error of about ulp/sqrt(12) =
// 2.8e-4 sigma next to the quantization error's 4.5e-3 sigma, i.e. ~0.4% of
// s for the smallest quantization errors of the grid; fp16 P adds relative
// noise of ~1e-4 per weight (~1e-8 of s where P differs from the
// reference's); Q rounding perturbs o and o' alike. 2% leaves room for that
// and for selection near-ties between the CUDA and reference scores.
#include "worker/gpu_calibrator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "tests/worker/random_layer.h"
#include "worker/calibrator.h"

namespace moend::worker {
namespace {

using kernels::Backend;
using kernels::LayerTensors;

using ::moend::worker::testing::RandomLayer;

class GpuCalibratorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!kernels::CudaDeviceAvailable()) GTEST_SKIP() << kernels::CudaUnavailableReason();
  }
};

size_t RefIndex(const CalibrationOptions& o) {
  for (size_t i = 0; i < o.tuples.size(); ++i)
    if (o.tuples[i] == CompressionTuple{1.0, 16, 16}) return i;
  return 0;
}

void ExpectClose(const std::vector<double>& gpu, const std::vector<double>& cpu, const CalibrationOptions& o,
                 const std::string& what) {
  ASSERT_EQ(gpu.size(), cpu.size());
  double worst = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    EXPECT_NEAR(gpu[i], cpu[i], 2e-2 * cpu[i] + 1e-8) << ToString(o.tuples[i]) << " " << what;
    if (cpu[i] > 0) worst = std::max(worst, std::fabs(gpu[i] - cpu[i]) / cpu[i]);
  }
  std::printf("%s: worst relative difference %.3g over %zu tuples\n", what.c_str(), worst, cpu.size());
}

// ExpectClose for each KV head's row of MeasureLayer's per_head output.
void ExpectCloseHeads(const std::vector<std::vector<double>>& gpu, const std::vector<std::vector<double>>& cpu,
                      const CalibrationOptions& o, const std::string& what) {
  ASSERT_EQ(gpu.size(), cpu.size());
  for (size_t h = 0; h < cpu.size(); ++h) {
    EXPECT_EQ(gpu[h][RefIndex(o)], 0.0) << what << " KV head " << h;
    ExpectClose(gpu[h], cpu[h], o, absl::StrCat(what, " KV head ", h));
  }
}

TEST_F(GpuCalibratorTest, MatchesCpuCalibratorAndReferenceIsExactlyZero) {
  struct Shape { int64_t heads, kv_heads, n, d, probes; };
  for (const Shape& s : {Shape{4, 2, 700, 64, 64}, Shape{8, 2, 900, 128, 100}, Shape{7, 1, 1200, 128, 256}}) {
    RandomLayer layer(s.heads, s.kv_heads, s.n, s.d, static_cast<uint32_t>(s.n + s.d));
    CalibrationOptions o;  // the 112-tuple grid
    o.probe_tokens = s.probes;
    o.backend = Backend::kReference;
    std::vector<std::vector<double>> cpu_heads;
    auto cpu = MeasureLayer(layer.x, o, &cpu_heads);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    ASSERT_EQ(cpu_heads.size(), static_cast<size_t>(s.kv_heads));
    for (bool exact : {false, true}) {
      auto gpu = GpuCalibrator::Create({.exact_row_max = exact});
      ASSERT_TRUE(gpu.ok()) << gpu.status();
      const std::string what =
          absl::StrCat("H", s.heads, "/", s.kv_heads, " D", s.d, exact ? " exact" : " one-pass");
      auto got = (*gpu)->MeasureLayer(layer.x, o);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ((*got)[RefIndex(o)], 0.0);
      ExpectClose(*got, *cpu, o, what);
      // Per KV head, from the same pass.
      std::vector<std::vector<double>> heads;
      auto with_heads = (*gpu)->MeasureLayer(layer.x, o, &heads);
      ASSERT_TRUE(with_heads.ok()) << with_heads.status();
      ExpectClose(*with_heads, *cpu, o, what + " (per_head asked)");
      ExpectCloseHeads(heads, cpu_heads, o, what);
    }
    // MeasureLayer's CUDA branch is this calibrator.
    o.backend = Backend::kCuda;
    std::vector<std::vector<double>> dispatched_heads;
    auto dispatched = MeasureLayer(layer.x, o, &dispatched_heads);
    ASSERT_TRUE(dispatched.ok()) << dispatched.status();
    EXPECT_EQ((*dispatched)[RefIndex(o)], 0.0);
    ExpectClose(*dispatched, *cpu, o, "MeasureLayer(kCuda)");
    ExpectCloseHeads(dispatched_heads, cpu_heads, o, "MeasureLayer(kCuda)");
  }
}

// Every query head given head 0's q and every KV head KV head 0's k/v: on the
// device too, each head's s equals the layer's s (up to the order of the
// atomic double sums).
TEST_F(GpuCalibratorTest, PerHeadOfIdenticalHeadsEqualsPerLayer) {
  const int64_t heads = 8, kv_heads = 4, n = 700, d = 128;
  RandomLayer layer(heads, kv_heads, n, d, 17);
  for (int64_t h = 1; h < heads; ++h) std::copy_n(layer.q.begin(), n * d, layer.q.begin() + h * n * d);
  for (int64_t h = 1; h < kv_heads; ++h) {
    std::copy_n(layer.k.begin(), n * d, layer.k.begin() + h * n * d);
    std::copy_n(layer.v.begin(), n * d, layer.v.begin() + h * n * d);
  }
  CalibrationOptions o;
  o.probe_tokens = 64;
  auto gpu = GpuCalibrator::Create();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  std::vector<std::vector<double>> per_head;
  auto s = (*gpu)->MeasureLayer(layer.x, o, &per_head);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(per_head.size(), static_cast<size_t>(kv_heads));
  for (int64_t h = 0; h < kv_heads; ++h) {
    ASSERT_EQ(per_head[h].size(), o.tuples.size());
    for (size_t t = 0; t < o.tuples.size(); ++t)
      EXPECT_NEAR(per_head[h][t], (*s)[t], 1e-9 * (*s)[t]) << "KV head " << h << " " << ToString(o.tuples[t]);
  }
}

// A key that only the probes attend to (the window queries avoid it) is
// evicted at low keep; the compressed prefix's max then falls far below the
// reference offset, which the one-pass schedule must detect and redo.
TEST_F(GpuCalibratorTest, RecomputesGroupsWhoseOffsetIsFarFromTheRowMax) {
  const int64_t heads = 4, kv = 2, n = 800, d = 64, probes = 64, c = n - probes;
  RandomLayer layer(heads, kv, n, d, 5);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t t = 0; t < n; ++t) layer.q[(h * n + t) * d] = t >= c ? 12.0f : (t >= c - 32 ? -12.0f : 0.0f);
  for (int64_t h = 0; h < kv; ++h) {
    for (int64_t t = 0; t < n; ++t) layer.k[(h * n + t) * d] = 0.0f;
    for (int64_t i = 0; i < d; ++i) layer.k[(h * n + 300) * d + i] = i == 0 ? 12.0f : 0.0f;
  }
  CalibrationOptions o;
  o.probe_tokens = probes;
  o.backend = Backend::kReference;
  auto cpu = MeasureLayer(layer.x, o);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  auto gpu = GpuCalibrator::Create();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  std::vector<std::vector<double>> gpu_heads;
  auto got = (*gpu)->MeasureLayer(layer.x, o, &gpu_heads);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_GT((*gpu)->last_stats().fallback_groups, 0);
  EXPECT_EQ((*got)[RefIndex(o)], 0.0);
  ExpectClose(*got, *cpu, o, "evicted probe-only key");
  // The recomputed groups' per-head sums are reset and redone, not added twice.
  std::vector<std::vector<double>> cpu_heads;
  ASSERT_TRUE(MeasureLayer(layer.x, o, &cpu_heads).ok());
  ExpectCloseHeads(gpu_heads, cpu_heads, o, "evicted probe-only key");
}

TEST_F(GpuCalibratorTest, RejectsBadOptions) {
  RandomLayer layer(4, 2, 100, 64, 1);
  auto gpu = GpuCalibrator::Create();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  CalibrationOptions o;
  o.probe_tokens = 64;
  o.tuples = {{0.5, 4, 4}};
  EXPECT_EQ((*gpu)->MeasureLayer(layer.x, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = CalibrationOptions{};
  o.probe_tokens = 100;
  EXPECT_EQ((*gpu)->MeasureLayer(layer.x, o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moend::worker

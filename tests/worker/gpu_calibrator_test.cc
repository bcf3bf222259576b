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

TEST_F(GpuCalibratorTest, MatchesCpuCalibratorAndReferenceIsExactlyZero) {
  struct Shape { int64_t heads, kv_heads, n, d, probes; };
  for (const Shape& s : {Shape{4, 2, 700, 64, 64}, Shape{8, 2, 900, 128, 100}, Shape{7, 1, 1200, 128, 256}}) {
    RandomLayer layer(s.heads, s.kv_heads, s.n, s.d, static_cast<uint32_t>(s.n + s.d));
    CalibrationOptions o;  // the 112-tuple grid
    o.probe_tokens = s.probes;
    o.backend = Backend::kReference;
    auto cpu = MeasureLayer(layer.x, o);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    for (bool exact : {false, true}) {
      auto gpu = GpuCalibrator::Create({.exact_row_max = exact});
      ASSERT_TRUE(gpu.ok()) << gpu.status();
      auto got = (*gpu)->MeasureLayer(layer.x, o);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ((*got)[RefIndex(o)], 0.0);
      ExpectClose(*got, *cpu, o,
                  absl::StrCat("H", s.heads, "/", s.kv_heads, " D", s.d, exact ? " exact" : " one-pass"));
    }
    // MeasureLayer's CUDA branch is this calibrator.
    o.backend = Backend::kCuda;
    auto dispatched = MeasureLayer(layer.x, o);
    ASSERT_TRUE(dispatched.ok()) << dispatched.status();
    EXPECT_EQ((*dispatched)[RefIndex(o)], 0.0);
    ExpectClose(*dispatched, *cpu, o, "MeasureLayer(kCuda)");
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
  auto got = (*gpu)->MeasureLayer(layer.x, o);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_GT((*gpu)->last_stats().fallback_groups, 0);
  EXPECT_EQ((*got)[RefIndex(o)], 0.0);
  ExpectClose(*got, *cpu, o, "evicted probe-only key");
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

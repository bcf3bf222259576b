// The device-resident sensitivity calibrator: worker::MeasureLayer's grid
// (DESIGN.md section 2, "Sensitivity") with every step on the GPU. Built only
// with CUDA (MOEND_WITH_CUDA); worker::MeasureLayer uses it when its backend
// resolves to CUDA.
//
// Per layer: q/k/v on the device once; SnapKV scores once; per keep the
// selection, then per bit width b the CUDA quantizer and a dequantizer to
// dense fp16 keys (one array per K bits) and values (the V bits side by side,
// [tokens, nv * D]). Per (keep, K bits) one tensor-core kernel computes the
// probe scores and P = fp16(exp(s - offset)) with per-row sums, one cuBLAS
// GEMM computes P V for all V bits at once, and a merge kernel combines it
// with the uncompressed tail (computed once per layer, fp32) and accumulates
// sum ||o' - o||^2 per tuple and KV head (the layer's sums are the heads'
// sums added on the host); o is the (1,16,16) output through the same path,
// so that tuple is exactly 0.
//
// Precision against the CPU path (fp32 everywhere): Q, the dequantized K and
// V and P are fp16 operands with fp32 accumulation. The offset is the exact
// row max of the uncompressed prefix (fp16 P never exceeds e^10 and keeps
// full precision near the max); rows whose compressed max lands outside
// [offset - 4, offset + 10] are detected and their (keep, K bits) recomputed
// with the exact row max (two passes).
#ifndef MOEND_WORKER_GPU_CALIBRATOR_H_
#define MOEND_WORKER_GPU_CALIBRATOR_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/kv_compress.h"
#include "worker/calibrator.h"

namespace moend::worker {

struct GpuCalibratorOptions {
  // true: always compute each (keep, K bits)'s exact row max first (two
  // passes over the scores); false (default): one pass with the reference
  // offset, falling back to two passes only where detected.
  bool exact_row_max = false;
  // Benchmarks only: time the phases (serializes the streams and waits after
  // every (keep, K bits); slower).
  bool profile = false;
};

// Timing breakdown of the last MeasureLayer call (device milliseconds).
struct GpuCalibratorStats {
  double total_ms = 0;
  int fallback_groups = 0;  // (keep, K bits) recomputed with the exact max
  // With GpuCalibratorOptions::profile: summed device time of each phase.
  double prep_ms = 0;   // scores, selection, quantization, dequantization
  double tail_ms = 0;   // uncompressed tail partial
  double score_ms = 0;  // probe scores and P (both passes where exact)
  double gemm_ms = 0;   // P V
  double merge_ms = 0;  // merge + error
};

class GpuCalibrator {
 public:
  // Creates the cuBLAS handle and stream on the current device.
  // FailedPrecondition when no CUDA device can be used.
  static absl::StatusOr<std::unique_ptr<GpuCalibrator>> Create(GpuCalibratorOptions options = {});
  ~GpuCalibrator();
  GpuCalibrator(const GpuCalibrator&) = delete;
  GpuCalibrator& operator=(const GpuCalibrator&) = delete;

  // As worker::MeasureLayer: x holds host pointers (copied to the device).
  // per_head (optional) as there: [num_kv_heads][tuples], from per-KV-head
  // error and norm sums accumulated on the device in the same pass.
  absl::StatusOr<std::vector<double>> MeasureLayer(const kernels::LayerTensors& x,
                                                   const CalibrationOptions& options,
                                                   std::vector<std::vector<double>>* per_head = nullptr);
  // The same with x's q/k/v already in device memory (float32, same layout):
  // the "activations given" entry the benchmarks time.
  absl::StatusOr<std::vector<double>> MeasureDeviceLayer(const kernels::LayerTensors& x,
                                                         const CalibrationOptions& options,
                                                         std::vector<std::vector<double>>* per_head = nullptr);

  const GpuCalibratorStats& last_stats() const;

 private:
  struct Impl;
  explicit GpuCalibrator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// MeasureLayer on a process-wide GpuCalibrator (created on first use, calls
// serialized): the CUDA branch of worker::MeasureLayer.
absl::StatusOr<std::vector<double>> MeasureLayerOnGpu(const kernels::LayerTensors& x,
                                                      const CalibrationOptions& options,
                                                      std::vector<std::vector<double>>* per_head = nullptr);

}  // namespace moend::worker

#endif  // MOEND_WORKER_GPU_CALIBRATOR_H_

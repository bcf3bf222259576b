// Sensitivity calibration (DESIGN.md section 2, "Sensitivity"): for each layer
// and tuple, the relative squared error of the probe queries' attention output
// when that layer's prefix is compressed with the tuple.
//
// Compression goes through kernels/ (the code inference uses). The probe
// attention runs on the CPU as dense matrix products over the dequantized
// kept tokens, factored so that work shared by tuples is done once: scores once
// per layer, selection once per keep, Q K^T and softmax once per (keep, K bits),
// the uncompressed tail once per layer.
#ifndef MOEND_WORKER_CALIBRATOR_H_
#define MOEND_WORKER_CALIBRATOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/compression.h"
#include "runtime/model.h"
#include "kernels/backend.h"
#include "kernels/kv_compress.h"
#include "worker/gpu_model.h"  // GpuForwardPrecision (the header needs no CUDA)

namespace moend::worker {

struct CalibrationOptions {
  // Tuples to measure; must include (1,16,16), the reference. Default: the
  // 112-tuple grid of DESIGN.md.
  std::vector<CompressionTuple> tuples = TupleGrid::Default().Tuples();
  // Probe queries at the end of each sequence; compression point c = n - probes.
  int64_t probe_tokens = 256;
  // Backend of the compression kernels (scores, selection, quantization).
  kernels::Backend backend = kernels::Backend::kAuto;
  // CalibrateLayers on the CUDA backend: the GPU forward's arithmetic
  // (worker/gpu_model.h). The CPU forward is always float32.
  GpuForwardPrecision gpu_forward = GpuForwardPrecision::kBf16;
};

// s(tuple) for one layer of one sequence: x holds the layer's q/k/v for all n
// tokens; the prefix [0, n - probe_tokens) is compressed. Result in
// options.tuples order.
//
// per_head (optional): on success, the per-KV-head sensitivity (DESIGN.md
// section 3.1) from the same outputs, [x.num_kv_heads][tuples]: entry [h][t]
// is the error of tuple t over the probes, channels and query heads of KV head
// h's GQA group, divided by that group's reference norm (0 when it is 0).
// The per-layer result is the pooled ratio (sum of the heads' errors over the
// sum of their norms), not the mean of the per-head values.
absl::StatusOr<std::vector<double>> MeasureLayer(const kernels::LayerTensors& x,
                                                 const CalibrationOptions& options,
                                                 std::vector<std::vector<double>>* per_head = nullptr);

// Progress: sequences finished out of total.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

// Mean of s over `sequences` for layers [layer_begin, layer_end): one full
// forward per sequence, each layer measured in isolation on the reference
// activations. Result: [layer_end - layer_begin][tuples].
//
// per_head (optional): on success, the mean over `sequences` of MeasureLayer's
// per-KV-head values, [layer_end - layer_begin][num_kv_heads][tuples].
absl::StatusOr<std::vector<std::vector<double>>> CalibrateLayers(
    const Model& model, std::span<const std::vector<int32_t>> sequences, int64_t layer_begin,
    int64_t layer_end, const CalibrationOptions& options, const ProgressFn& progress = nullptr,
    std::vector<std::vector<std::vector<double>>>* per_head = nullptr);

// Sequences [sample_begin, sample_end) of `seq_len` tokens each from a file of
// concatenated calibration sequences: moend's token-id format (uint32 ids
// after an 8-byte header, runtime/token_file.h) or any other file as one token
// per byte. OutOfRange when the file is too short, naming how many sequences
// it holds. sample_end < 0 means every whole sequence in the file. With
// vocab_size > 0, an id outside [0, vocab_size) in the selected sequences is
// InvalidArgument naming the file, the sequence and the position.
absl::StatusOr<std::vector<std::vector<int32_t>>> LoadCalibrationSequences(
    const std::string& path, int64_t seq_len, int64_t sample_begin, int64_t sample_end,
    int64_t vocab_size = 0);

// The checks both calibrators (CPU and GPU) make of `options`: probe_tokens
// >= 1, a non-empty grid of valid tuples that includes (1,16,16).
absl::Status ValidateCalibrationOptions(const CalibrationOptions& options);

}  // namespace moend::worker

#endif  // MOEND_WORKER_CALIBRATOR_H_

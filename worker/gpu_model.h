// The causal prefill of a moend::Model (runtime/model.h) on the GPU: the forward
// that feeds the GPU calibrator without a host round trip
// (worker::CalibrateLayers on the CUDA backend). GpuModel is built only with
// CUDA (MOEND_WITH_CUDA); this header needs no CUDA headers, so that every
// build sees GpuForwardPrecision (worker::CalibrationOptions).
//
// Same semantics as Model::Forward: embedding, RMSNorm, q/k/v projections (+
// optional bias), rotate-half RoPE, GQA causal softmax attention, o_proj,
// SwiGLU MLP, final norm, lm_head. Two precisions (GpuForwardPrecision):
//  - kBf16 (default): weights held on the device in BF16 (rounded to nearest
//    even from the model's float32 copy; exact for a BF16 checkpoint). Every
//    matrix product is a cuBLAS BF16 tensor-core GEMM with fp32 accumulation
//    (CUBLAS_COMPUTE_32F) whose activation operand is rounded to BF16: the
//    normed inputs of q/k/v, gate/up and lm_head, q and k for the scores, the
//    softmax probabilities P and v for P V, the attention output into o_proj
//    (P V's result, rounded once), silu(gate) * up into down_proj. The
//    residual stream, RMSNorm, bias, RoPE, softmax, SiLU and the q/k/v handed
//    to callbacks stay fp32. Attention materializes the scores of a block of
//    queries of all heads of one KV head at a time (strided-batched GEMMs, at
//    most GpuModelOptions::attention_score_bytes of fp32 scores).
//  - kFloat32: fp32 weights, cuBLAS SGEMMs in plain fp32 (CUBLAS_DEFAULT_MATH,
//    no TF32), attention per query head; matches the CPU forward to float32
//    rounding.
// tests/worker/gpu_model_test.cc states the tolerances of both.
#ifndef MOEND_WORKER_GPU_MODEL_H_
#define MOEND_WORKER_GPU_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/model.h"

namespace moend::worker {

// Sees one layer's q [H, n, D] (after RoPE), k [Hkv, n, D] (after RoPE) and
// v [Hkv, n, D] in DEVICE memory (LayerActivations' layout). The model's work
// that produced them is complete when it is called; they stay valid and
// unchanged until it returns, and any device work of the callback that reads
// them must be complete by then (the forward overwrites them at the next
// layer). A non-OK status stops the forward and is returned by it.
using DeviceLayerCallback = std::function<absl::Status(const LayerActivations&)>;

enum class GpuForwardPrecision {
  kBf16,     // BF16 tensor cores, fp32 accumulation, BF16 weights (see above)
  kFloat32,  // fp32 SGEMM, fp32 weights: the CPU forward's arithmetic
};

struct GpuModelOptions {
  GpuForwardPrecision precision = GpuForwardPrecision::kBf16;
  // Time the attention of each layer with CUDA events (GpuModelStats); the
  // events are read once at the end of each call.
  bool profile = false;
  // Attention scores held at a time, bytes (fp32 [heads, rows, keys] of one
  // block of queries; blocks are a multiple of 64 queries, at least 64).
  int64_t attention_score_bytes = int64_t{256} << 20;
};

// Of the last Forward / Prefill call, with GpuModelOptions::profile.
struct GpuModelStats {
  double attention_ms = 0;  // device time of the attention blocks, all layers
};

class GpuModel {
 public:
  // Uploads `model`'s weights to the current device (fp32, or converted to
  // BF16 on the device through a staging buffer) and creates the cuBLAS handle
  // and stream. `model` is not referenced afterwards. FailedPrecondition when
  // no CUDA device can be used; InvalidArgument for a score budget below 1.
  static absl::StatusOr<std::unique_ptr<GpuModel>> Create(const Model& model,
                                                          const GpuModelOptions& options = {});
  ~GpuModel();
  GpuModel(const GpuModel&) = delete;
  GpuModel& operator=(const GpuModel&) = delete;

  // Full causal prefill; returns logits [n, vocab] on the host. `on_layer`, if
  // set, sees each layer's q, k, v on the device. Token ids must be in
  // [0, vocab) (InvalidArgument otherwise, as Model::Forward). One call at a
  // time per GpuModel.
  absl::StatusOr<std::vector<float>> Forward(std::span<const int32_t> tokens,
                                             const DeviceLayerCallback& on_layer = nullptr);

  // Layers [0, layer_end) only, up to the callback of layer layer_end - 1 (no
  // attention or MLP after it, no final norm, no logits): what calibration
  // needs. `on_layer` as in Forward.
  absl::Status Prefill(std::span<const int32_t> tokens, int64_t layer_end,
                       const DeviceLayerCallback& on_layer);

  const ModelConfig& config() const;
  const GpuModelOptions& options() const;
  const GpuModelStats& last_stats() const;

 private:
  struct Impl;
  explicit GpuModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moend::worker

#endif  // MOEND_WORKER_GPU_MODEL_H_

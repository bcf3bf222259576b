// The causal prefill of a moend::Model (core/model.h) on the GPU, float32
// throughout: the forward that feeds the GPU calibrator without a host round
// trip (worker::CalibrateLayers on the CUDA backend). Built only with CUDA
// (MOEND_WITH_CUDA); no CUDA headers here.
//
// Same semantics as Model::Forward: embedding, RMSNorm, q/k/v projections (+
// optional bias), rotate-half RoPE, GQA causal softmax attention, o_proj,
// SwiGLU MLP, final norm, lm_head. Matrix products are cuBLAS SGEMMs in plain
// fp32 (CUBLAS_DEFAULT_MATH, no TF32); attention materializes each query
// head's scores for a block of queries against the keys it can see (at most
// 256 MiB of scores at a time), softmaxes them and multiplies by V. Results
// match the CPU forward to float32 rounding (tests/worker/gpu_model_test.cc
// states the tolerances).
#ifndef MOEND_WORKER_GPU_MODEL_H_
#define MOEND_WORKER_GPU_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/model.h"

namespace moend::worker {

// Sees one layer's q [H, n, D] (after RoPE), k [Hkv, n, D] (after RoPE) and
// v [Hkv, n, D] in DEVICE memory (LayerActivations' layout). The model's work
// that produced them is complete when it is called; they stay valid and
// unchanged until it returns, and any device work of the callback that reads
// them must be complete by then (the forward overwrites them at the next
// layer). A non-OK status stops the forward and is returned by it.
using DeviceLayerCallback = std::function<absl::Status(const LayerActivations&)>;

class GpuModel {
 public:
  // Uploads `model`'s float32 weights to the current device and creates the
  // cuBLAS handle and stream. `model` is not referenced afterwards.
  // FailedPrecondition when no CUDA device can be used.
  static absl::StatusOr<std::unique_ptr<GpuModel>> Create(const Model& model);
  ~GpuModel();
  GpuModel(const GpuModel&) = delete;
  GpuModel& operator=(const GpuModel&) = delete;

  // Full causal prefill; returns logits [n, vocab] on the host. `on_layer`, if
  // set, sees each layer's q, k, v on the device. Token ids must be in
  // [0, vocab) (InvalidArgument otherwise, as Model::Forward). One call at a
  // time per GpuModel.
  absl::StatusOr<std::vector<float>> Forward(std::span<const int32_t> tokens,
                                             const DeviceLayerCallback& on_layer = nullptr);

  // Layers [0, layer_end) only (no final norm, no logits): what calibration
  // needs. `on_layer` as in Forward.
  absl::Status Prefill(std::span<const int32_t> tokens, int64_t layer_end,
                       const DeviceLayerCallback& on_layer);

  const ModelConfig& config() const;

 private:
  struct Impl;
  explicit GpuModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moend::worker

#endif  // MOEND_WORKER_GPU_MODEL_H_

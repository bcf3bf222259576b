// Host side of the GPU forward: weights and activations in device memory, the
// layer schedule and the cuBLAS calls. Every cudaError_t / cublasStatus_t
// becomes an absl::Status.
//
// cuBLAS is column-major; a row-major [rows, cols] matrix is its transpose
// there. y [n, out] = x [n, in] w [out, in]^T is therefore
// Sgemm(T, N, m = out, n = n, k = in, A = w (lda in), B = x (ldb in), C = y (ldc out)).
#include "worker/gpu_model.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "kernels/backend.h"
#include "worker/cuda_util.h"
#include "worker/gpu_model_kernels.h"

namespace moend::worker {
namespace {

// Scores of one query head held at a time: blocks of queries are sized so
// that [rows, keys] fits in this many floats (256 MiB).
constexpr int64_t kScoreFloats = int64_t{64} << 20;

// Queries per attention block for n tokens: all of them when n^2 scores fit,
// else a multiple of 64.
int64_t QueryBlock(int64_t n) {
  if (n * n <= kScoreFloats) return n;
  return std::max<int64_t>(64, kScoreFloats / n / 64 * 64);
}

struct DeviceLayer {
  DeviceArray attn_norm, mlp_norm, qkv, qkv_bias, o, gate_up, down;
  bool has_bias = false;
};

}  // namespace

struct GpuModel::Impl {
  ModelConfig config;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  // Weights (float32, the layouts of Model::LayerWeights).
  DeviceArray embed, lm_head, final_norm, inv_freq;
  std::unique_ptr<DeviceLayer[]> layers;
  // Activations of the current call (grow-only).
  DeviceArray tokens, x, normed, qkv, q, k, v, attn, gu, scores, logits;

  ~Impl() {
    if (blas != nullptr) cublasDestroy(blas);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  absl::Status Upload(std::span<const float> host, DeviceArray& dst) {
    MOEND_RETURN_IF_ERROR(dst.Reserve(host.size_bytes()));
    if (host.empty()) return absl::OkStatus();
    MOEND_CUDA_RETURN(cudaMemcpyAsync(dst.as<float>(), host.data(), host.size_bytes(),
                                      cudaMemcpyHostToDevice, stream));
    return absl::OkStatus();
  }

  // y [n, out] = x [n, in] (row stride ldx) w [out, in]^T + beta y.
  absl::Status Linear(const float* x_in, int64_t ldx, const float* w, int64_t n, int64_t out, int64_t in,
                      float beta, float* y) {
    const float one = 1.0f;
    MOEND_CUBLAS_RETURN(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(n),
                                    static_cast<int>(in), &one, w, static_cast<int>(in), x_in,
                                    static_cast<int>(ldx), &beta, y, static_cast<int>(out)));
    return absl::OkStatus();
  }

  // attn [n, H * D] token-major = causal GQA softmax attention of q, k, v
  // (as Model::CausalAttention).
  absl::Status Attention(int64_t n) {
    const int64_t h = config.num_heads, d = config.head_dim, group = config.num_heads / config.num_kv_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(d)), one = 1.0f, zero = 0.0f;
    const int64_t block = QueryBlock(n);
    const int D = static_cast<int>(d);
    for (int64_t q0 = 0; q0 < n; q0 += block) {
      const int64_t rows = std::min(block, n - q0), keys = q0 + rows;  // causal: keys [0, q0 + rows)
      const int R = static_cast<int>(rows), K = static_cast<int>(keys);
      for (int64_t head = 0; head < h; ++head) {
        const int64_t kv = head / group;
        // s [rows, keys] = scale * q_blk k^T
        MOEND_CUBLAS_RETURN(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, K, R, D, &scale,
                                        k.as<float>() + kv * n * d, D, q.as<float>() + (head * n + q0) * d, D,
                                        &zero, scores.as<float>(), K));
        MOEND_CUDA_RETURN(gpumodel::LaunchCausalSoftmax(scores.as<float>(), rows, keys, q0, stream));
        // attn[q0 + r, head * D ...] = p v
        MOEND_CUBLAS_RETURN(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, D, R, K, &one, v.as<float>() + kv * n * d,
                                        D, scores.as<float>(), K, &zero, attn.as<float>() + q0 * h * d + head * d,
                                        static_cast<int>(h * d)));
      }
    }
    return absl::OkStatus();
  }

  // Layers [0, layer_end); with `logits_out`, also the final norm and
  // lm_head, copied to the host.
  absl::Status Run(std::span<const int32_t> ids, int64_t layer_end, const DeviceLayerCallback& on_layer,
                   std::vector<float>* logits_out) {
    const ModelConfig& c = config;
    const int64_t n = static_cast<int64_t>(ids.size());
    const int64_t hidden = c.hidden_size, h = c.num_heads, hkv = c.num_kv_heads, d = c.head_dim;
    const int64_t inter = c.intermediate_size, width = (h + 2 * hkv) * d;
    const float eps = static_cast<float>(c.rms_norm_eps);
    MOEND_RETURN_IF_ERROR(tokens.Reserve(n * 4));
    MOEND_RETURN_IF_ERROR(x.Reserve(n * hidden * 4));
    MOEND_RETURN_IF_ERROR(normed.Reserve(n * hidden * 4));
    MOEND_RETURN_IF_ERROR(qkv.Reserve(n * width * 4));
    MOEND_RETURN_IF_ERROR(q.Reserve(h * n * d * 4));
    MOEND_RETURN_IF_ERROR(k.Reserve(hkv * n * d * 4));
    MOEND_RETURN_IF_ERROR(v.Reserve(hkv * n * d * 4));
    MOEND_RETURN_IF_ERROR(attn.Reserve(n * h * d * 4));
    MOEND_RETURN_IF_ERROR(gu.Reserve(n * 2 * inter * 4));
    MOEND_RETURN_IF_ERROR(scores.Reserve(QueryBlock(n) * n * 4));

    // Pageable source: staged before the call returns.
    MOEND_CUDA_RETURN(cudaMemcpyAsync(tokens.as<int32_t>(), ids.data(), n * 4, cudaMemcpyHostToDevice, stream));
    MOEND_CUDA_RETURN(gpumodel::LaunchEmbed(tokens.as<int32_t>(), embed.as<float>(), n, static_cast<int>(hidden),
                                            x.as<float>(), stream));
    for (int64_t l = 0; l < layer_end; ++l) {
      const DeviceLayer& L = layers[static_cast<size_t>(l)];
      // Model::AttentionInputs
      MOEND_CUDA_RETURN(gpumodel::LaunchRmsNorm(x.as<float>(), L.attn_norm.as<float>(), n,
                                                static_cast<int>(hidden), eps, normed.as<float>(), stream));
      MOEND_RETURN_IF_ERROR(
          Linear(normed.as<float>(), hidden, L.qkv.as<float>(), n, width, hidden, 0.0f, qkv.as<float>()));
      gpumodel::RopeParams rp;
      rp.qkv = qkv.as<float>();
      rp.bias = L.has_bias ? L.qkv_bias.as<float>() : nullptr;
      rp.inv_freq = inv_freq.as<float>();
      rp.tokens = n;
      rp.num_heads = static_cast<int>(h);
      rp.num_kv_heads = static_cast<int>(hkv);
      rp.head_dim = static_cast<int>(d);
      rp.q = q.as<float>();
      rp.k = k.as<float>();
      rp.v = v.as<float>();
      MOEND_CUDA_RETURN(gpumodel::LaunchRope(rp, stream));
      if (on_layer) {
        MOEND_CUDA_RETURN(cudaStreamSynchronize(stream));
        MOEND_RETURN_IF_ERROR(on_layer(LayerActivations{l, n, q.as<float>(), k.as<float>(), v.as<float>()}));
      }
      MOEND_RETURN_IF_ERROR(Attention(n));
      // Model::FinishLayer
      MOEND_RETURN_IF_ERROR(Linear(attn.as<float>(), h * d, L.o.as<float>(), n, hidden, h * d, 1.0f, x.as<float>()));
      MOEND_CUDA_RETURN(gpumodel::LaunchRmsNorm(x.as<float>(), L.mlp_norm.as<float>(), n,
                                                static_cast<int>(hidden), eps, normed.as<float>(), stream));
      MOEND_RETURN_IF_ERROR(
          Linear(normed.as<float>(), hidden, L.gate_up.as<float>(), n, 2 * inter, hidden, 0.0f, gu.as<float>()));
      MOEND_CUDA_RETURN(gpumodel::LaunchSiluMul(gu.as<float>(), n, static_cast<int>(inter), stream));
      MOEND_RETURN_IF_ERROR(
          Linear(gu.as<float>(), 2 * inter, L.down.as<float>(), n, hidden, inter, 1.0f, x.as<float>()));
    }
    if (logits_out != nullptr) {
      // Model::Logits
      MOEND_RETURN_IF_ERROR(logits.Reserve(n * c.vocab_size * 4));
      MOEND_CUDA_RETURN(gpumodel::LaunchRmsNorm(x.as<float>(), final_norm.as<float>(), n,
                                                static_cast<int>(hidden), eps, normed.as<float>(), stream));
      MOEND_RETURN_IF_ERROR(Linear(normed.as<float>(), hidden, lm_head.as<float>(), n, c.vocab_size, hidden, 0.0f,
                                   logits.as<float>()));
      logits_out->resize(static_cast<size_t>(n * c.vocab_size));
      MOEND_CUDA_RETURN(cudaMemcpyAsync(logits_out->data(), logits.as<float>(), n * c.vocab_size * 4,
                                        cudaMemcpyDeviceToHost, stream));
    }
    MOEND_CUDA_RETURN(cudaStreamSynchronize(stream));
    return absl::OkStatus();
  }
};

GpuModel::GpuModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuModel::~GpuModel() = default;

absl::StatusOr<std::unique_ptr<GpuModel>> GpuModel::Create(const Model& model) {
  if (!kernels::CudaDeviceAvailable()) {
    return absl::FailedPreconditionError(absl::StrCat("GPU model: ", kernels::CudaUnavailableReason()));
  }
  auto impl = std::make_unique<Impl>();
  impl->config = model.config();
  const ModelConfig& c = impl->config;
  MOEND_CUDA_RETURN(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
  MOEND_CUBLAS_RETURN(cublasCreate(&impl->blas));
  MOEND_CUBLAS_RETURN(cublasSetStream(impl->blas, impl->stream));
  // Plain fp32 SGEMM (no TF32), so that results match the CPU forward.
  MOEND_CUBLAS_RETURN(cublasSetMathMode(impl->blas, CUBLAS_DEFAULT_MATH));
  MOEND_RETURN_IF_ERROR(impl->Upload(model.embedding(), impl->embed));
  MOEND_RETURN_IF_ERROR(impl->Upload(model.lm_head(), impl->lm_head));
  MOEND_RETURN_IF_ERROR(impl->Upload(model.final_norm(), impl->final_norm));
  MOEND_RETURN_IF_ERROR(impl->Upload(model.inv_freq(), impl->inv_freq));
  impl->layers = std::make_unique<DeviceLayer[]>(static_cast<size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const Model::LayerWeights w = model.layer_weights(l);
    DeviceLayer& L = impl->layers[static_cast<size_t>(l)];
    MOEND_RETURN_IF_ERROR(impl->Upload(w.attn_norm, L.attn_norm));
    MOEND_RETURN_IF_ERROR(impl->Upload(w.mlp_norm, L.mlp_norm));
    MOEND_RETURN_IF_ERROR(impl->Upload(w.qkv, L.qkv));
    MOEND_RETURN_IF_ERROR(impl->Upload(w.qkv_bias, L.qkv_bias));
    MOEND_RETURN_IF_ERROR(impl->Upload(w.o, L.o));
    MOEND_RETURN_IF_ERROR(impl->Upload(w.gate_up, L.gate_up));
    MOEND_RETURN_IF_ERROR(impl->Upload(w.down, L.down));
    L.has_bias = !w.qkv_bias.empty();
  }
  // The uploads read the model's host arrays until they complete.
  MOEND_CUDA_RETURN(cudaStreamSynchronize(impl->stream));
  return std::unique_ptr<GpuModel>(new GpuModel(std::move(impl)));
}

absl::StatusOr<std::vector<float>> GpuModel::Forward(std::span<const int32_t> tokens,
                                                     const DeviceLayerCallback& on_layer) {
  const ModelConfig& c = impl_->config;
  std::vector<float> logits;
  MOEND_RETURN_IF_ERROR(Model::CheckTokens(c, tokens));
  MOEND_RETURN_IF_ERROR(impl_->Run(tokens, c.num_layers, on_layer, &logits));
  return logits;
}

absl::Status GpuModel::Prefill(std::span<const int32_t> tokens, int64_t layer_end,
                               const DeviceLayerCallback& on_layer) {
  const ModelConfig& c = impl_->config;
  if (layer_end < 0 || layer_end > c.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer_end ", layer_end, " is not in [0, ", c.num_layers, "]"));
  }
  MOEND_RETURN_IF_ERROR(Model::CheckTokens(c, tokens));
  return impl_->Run(tokens, layer_end, on_layer, nullptr);
}

const ModelConfig& GpuModel::config() const { return impl_->config; }

}  // namespace moend::worker

// Host side of the GPU forward: weights and activations in device memory, the
// layer schedule and the cuBLAS calls. Every cudaError_t / cublasStatus_t
// becomes an absl::Status.
//
// cuBLAS is column-major; a row-major [rows, cols] matrix is its transpose
// there. y [n, out] = x [n, in] w [out, in]^T is therefore
// Gemm(T, N, m = out, n = n, k = in, A = w (lda in), B = x (ldb in), C = y (ldc out)).
// BF16 arrays are DeviceArrays of uint16_t (their bits); cuBLAS reads them as
// CUDA_R_16BF.
#include "worker/gpu_model.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "kernels/backend.h"
#include "worker/cuda_util.h"
#include "worker/gpu_model_kernels.h"

namespace moend::worker {
namespace {

// Floats staged per host-to-device copy when converting weights to BF16.
constexpr int64_t kStageFloats = int64_t{16} << 20;

// Queries per attention block for n tokens and `heads` heads at a time: all of
// them when heads * n^2 scores fit in `budget` floats, else a multiple of 64.
int64_t QueryBlock(int64_t n, int64_t heads, int64_t budget) {
  if (heads * n * n <= budget) return n;
  return std::max<int64_t>(64, budget / (heads * n) / 64 * 64);
}

struct DeviceLayer {
  // Norm weights and bias fp32; the matrices in the forward's precision.
  DeviceArray attn_norm, mlp_norm, qkv, qkv_bias, o, gate_up, down;
  bool has_bias = false;
};

}  // namespace

struct GpuModel::Impl {
  ModelConfig config;
  GpuModelOptions options;
  GpuModelStats stats;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  std::vector<cudaEvent_t> events;  // profile: attention start/stop per layer
  // Weights (the layouts of Model::LayerWeights); embed and lm_head in the
  // forward's precision.
  DeviceArray embed, lm_head, final_norm, inv_freq, stage;
  std::unique_ptr<DeviceLayer[]> layers;
  // Activations of the current call (grow-only). fp32 unless noted; with
  // BF16: normed and attn BF16, q16/k16/v16 the BF16 copies of q/k/v, p the
  // BF16 probabilities, act = silu(gate) * up in BF16.
  DeviceArray tokens, x, normed, qkv, q, k, v, attn, gu, scores, logits;
  DeviceArray q16, k16, v16, p, act;

  ~Impl() {
    for (cudaEvent_t e : events) cudaEventDestroy(e);
    if (blas != nullptr) cublasDestroy(blas);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  bool bf16() const { return options.precision == GpuForwardPrecision::kBf16; }
  // Bytes of an element of the weights and of the matrix products' activation operands.
  int64_t elem() const { return bf16() ? 2 : 4; }

  absl::Status Upload(std::span<const float> host, DeviceArray& dst) {
    MOEND_RETURN_IF_ERROR(dst.Reserve(host.size_bytes()));
    if (host.empty()) return absl::OkStatus();
    MOEND_CUDA_RETURN(cudaMemcpyAsync(dst.as<float>(), host.data(), host.size_bytes(),
                                      cudaMemcpyHostToDevice, stream));
    return absl::OkStatus();
  }

  // A weight matrix in the forward's precision: BF16 is converted on the
  // device, kStageFloats at a time (the copy into `stage` is ordered after the
  // previous conversion on the same stream).
  absl::Status UploadMatrix(std::span<const float> host, DeviceArray& dst) {
    if (!bf16()) return Upload(host, dst);
    const int64_t count = static_cast<int64_t>(host.size());
    MOEND_RETURN_IF_ERROR(dst.Reserve(count * 2));
    MOEND_RETURN_IF_ERROR(stage.Reserve(std::min(count, kStageFloats) * 4));
    for (int64_t i = 0; i < count; i += kStageFloats) {
      const int64_t chunk = std::min(kStageFloats, count - i);
      MOEND_CUDA_RETURN(cudaMemcpyAsync(stage.as<float>(), host.data() + i, chunk * 4, cudaMemcpyHostToDevice,
                                        stream));
      MOEND_CUDA_RETURN(gpumodel::LaunchFloatToBf16(stage.as<float>(), chunk, dst.as<uint16_t>() + i, stream));
    }
    return absl::OkStatus();
  }

  // C = alpha op(A) op(B) + beta C (column-major, as cuBLAS), `batch` times
  // with element strides sa, sb, sc. fp32: SGEMM (A, B, C float); BF16: A and
  // B BF16, C fp32 or BF16 (c_bf16), fp32 accumulation.
  absl::Status Gemm(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, float alpha,
                    const void* a, int64_t lda, int64_t sa, const void* b, int64_t ldb, int64_t sb, float beta,
                    void* c, int64_t ldc, int64_t sc, bool c_bf16 = false, int64_t batch = 1) {
    const int M = static_cast<int>(m), N = static_cast<int>(n), K = static_cast<int>(k);
    const int LDA = static_cast<int>(lda), LDB = static_cast<int>(ldb), LDC = static_cast<int>(ldc);
    if (!bf16()) {
      const auto *fa = static_cast<const float*>(a), *fb = static_cast<const float*>(b);
      auto* fc = static_cast<float*>(c);
      if (batch == 1) {
        MOEND_CUBLAS_RETURN(cublasSgemm(blas, ta, tb, M, N, K, &alpha, fa, LDA, fb, LDB, &beta, fc, LDC));
      } else {
        MOEND_CUBLAS_RETURN(cublasSgemmStridedBatched(blas, ta, tb, M, N, K, &alpha, fa, LDA, sa, fb, LDB, sb, &beta,
                                                      fc, LDC, sc, static_cast<int>(batch)));
      }
      return absl::OkStatus();
    }
    const cudaDataType_t ct = c_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    if (batch == 1) {
      MOEND_CUBLAS_RETURN(cublasGemmEx(blas, ta, tb, M, N, K, &alpha, a, CUDA_R_16BF, LDA, b, CUDA_R_16BF, LDB, &beta,
                                       c, ct, LDC, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    } else {
      MOEND_CUBLAS_RETURN(cublasGemmStridedBatchedEx(blas, ta, tb, M, N, K, &alpha, a, CUDA_R_16BF, LDA, sa, b,
                                                     CUDA_R_16BF, LDB, sb, &beta, c, ct, LDC, sc,
                                                     static_cast<int>(batch), CUBLAS_COMPUTE_32F,
                                                     CUBLAS_GEMM_DEFAULT));
    }
    return absl::OkStatus();
  }

  // y [n, out] (fp32) = x [n, in] (row stride ldx) w [out, in]^T + beta y.
  absl::Status Linear(const void* x_in, int64_t ldx, const void* w, int64_t n, int64_t out, int64_t in, float beta,
                      float* y) {
    return Gemm(CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, 1.0f, w, in, 0, x_in, ldx, 0, beta, y, out, 0);
  }

  // out [n, hidden] = RMSNorm(x) in the precision of the matrix products' operands.
  absl::Status Norm(const DeviceArray& weight, int64_t n, DeviceArray& out) {
    const int hidden = static_cast<int>(config.hidden_size);
    const float eps = static_cast<float>(config.rms_norm_eps);
    if (bf16()) {
      MOEND_CUDA_RETURN(gpumodel::LaunchRmsNormBf16(x.as<float>(), weight.as<float>(), n, hidden, eps,
                                                    out.as<uint16_t>(), stream));
    } else {
      MOEND_CUDA_RETURN(
          gpumodel::LaunchRmsNorm(x.as<float>(), weight.as<float>(), n, hidden, eps, out.as<float>(), stream));
    }
    return absl::OkStatus();
  }

  // attn [n, H * D] token-major = causal GQA softmax attention of q, k, v
  // (as Model::CausalAttention). fp32: per query head, s = scale q k^T
  // (SGEMM), softmax in place, p v (SGEMM). BF16: per KV head, the same for
  // all heads of its group at once (strided-batched GEMMs over q16/k16/v16,
  // fp32 scores, BF16 p, BF16 attn).
  absl::Status Attention(int64_t n) {
    const int64_t h = config.num_heads, d = config.head_dim, group = config.num_heads / config.num_kv_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    const int64_t heads_at_once = bf16() ? group : 1;
    const int64_t block = QueryBlock(n, heads_at_once, options.attention_score_bytes / 4);
    for (int64_t q0 = 0; q0 < n; q0 += block) {
      const int64_t rows = std::min(block, n - q0), keys = q0 + rows;  // causal: keys [0, q0 + rows)
      for (int64_t head = 0; head < h; head += heads_at_once) {
        const int64_t kv = head / group;
        const DeviceArray &qs = bf16() ? q16 : q, &ks = bf16() ? k16 : k, &vs = bf16() ? v16 : v;
        const char* qh = qs.as<char>() + (head * n + q0) * d * elem();
        // s [heads_at_once, rows, keys] = scale * q_blk k^T
        MOEND_RETURN_IF_ERROR(Gemm(CUBLAS_OP_T, CUBLAS_OP_N, keys, rows, d, scale, ks.as<char>() + kv * n * d * elem(),
                                   d, 0, qh, d, n * d, 0.0f, scores.as<float>(), keys, rows * keys, false,
                                   heads_at_once));
        char* out = attn.as<char>() + (q0 * h * d + head * d) * elem();
        if (bf16()) {
          MOEND_CUDA_RETURN(gpumodel::LaunchCausalSoftmaxBf16(scores.as<float>(), heads_at_once, rows, keys, q0,
                                                              p.as<uint16_t>(), stream));
        } else {
          MOEND_CUDA_RETURN(gpumodel::LaunchCausalSoftmax(scores.as<float>(), rows, keys, q0, stream));
        }
        const void* probs = bf16() ? p.as<void>() : scores.as<void>();
        // attn[q0 + r, head * D ...] = p v, head by head of the batch
        MOEND_RETURN_IF_ERROR(Gemm(CUBLAS_OP_N, CUBLAS_OP_N, d, rows, keys, 1.0f, vs.as<char>() + kv * n * d * elem(),
                                   d, 0, probs, keys, rows * keys, 0.0f, out, h * d, d, bf16(), heads_at_once));
      }
    }
    return absl::OkStatus();
  }

  absl::Status Reserve(int64_t n, bool with_logits) {
    const ModelConfig& c = config;
    const int64_t hidden = c.hidden_size, h = c.num_heads, hkv = c.num_kv_heads, d = c.head_dim;
    const int64_t inter = c.intermediate_size, width = (h + 2 * hkv) * d;
    const int64_t heads_at_once = bf16() ? h / hkv : 1;
    MOEND_RETURN_IF_ERROR(tokens.Reserve(n * 4));
    MOEND_RETURN_IF_ERROR(x.Reserve(n * hidden * 4));
    MOEND_RETURN_IF_ERROR(normed.Reserve(n * hidden * elem()));
    MOEND_RETURN_IF_ERROR(qkv.Reserve(n * width * 4));
    MOEND_RETURN_IF_ERROR(q.Reserve(h * n * d * 4));
    MOEND_RETURN_IF_ERROR(k.Reserve(hkv * n * d * 4));
    MOEND_RETURN_IF_ERROR(v.Reserve(hkv * n * d * 4));
    MOEND_RETURN_IF_ERROR(attn.Reserve(n * h * d * elem()));
    MOEND_RETURN_IF_ERROR(gu.Reserve(n * 2 * inter * 4));
    const int64_t block = QueryBlock(n, heads_at_once, options.attention_score_bytes / 4);
    MOEND_RETURN_IF_ERROR(scores.Reserve(heads_at_once * block * n * 4));
    if (bf16()) {
      MOEND_RETURN_IF_ERROR(q16.Reserve(h * n * d * 2));
      MOEND_RETURN_IF_ERROR(k16.Reserve(hkv * n * d * 2));
      MOEND_RETURN_IF_ERROR(v16.Reserve(hkv * n * d * 2));
      MOEND_RETURN_IF_ERROR(p.Reserve(heads_at_once * block * n * 2));
      MOEND_RETURN_IF_ERROR(act.Reserve(n * inter * 2));
    }
    if (with_logits) MOEND_RETURN_IF_ERROR(logits.Reserve(n * c.vocab_size * 4));
    return absl::OkStatus();
  }

  // Layers [0, layer_end); with `logits_out`, also the final norm and
  // lm_head, copied to the host; without, nothing after the last callback.
  absl::Status Run(std::span<const int32_t> ids, int64_t layer_end, const DeviceLayerCallback& on_layer,
                   std::vector<float>* logits_out) {
    const ModelConfig& c = config;
    const int64_t n = static_cast<int64_t>(ids.size());
    const int64_t hidden = c.hidden_size, h = c.num_heads, hkv = c.num_kv_heads, d = c.head_dim;
    const int64_t inter = c.intermediate_size, width = (h + 2 * hkv) * d;
    MOEND_RETURN_IF_ERROR(Reserve(n, logits_out != nullptr));
    stats = {};

    // Pageable source: staged before the call returns.
    MOEND_CUDA_RETURN(cudaMemcpyAsync(tokens.as<int32_t>(), ids.data(), n * 4, cudaMemcpyHostToDevice, stream));
    if (bf16()) {
      MOEND_CUDA_RETURN(gpumodel::LaunchEmbedBf16(tokens.as<int32_t>(), embed.as<uint16_t>(), n,
                                                  static_cast<int>(hidden), x.as<float>(), stream));
    } else {
      MOEND_CUDA_RETURN(gpumodel::LaunchEmbed(tokens.as<int32_t>(), embed.as<float>(), n, static_cast<int>(hidden),
                                              x.as<float>(), stream));
    }
    int64_t timed = 0;  // layers whose attention the events bracket
    for (int64_t l = 0; l < layer_end; ++l) {
      const DeviceLayer& L = layers[static_cast<size_t>(l)];
      // Model::AttentionInputs
      MOEND_RETURN_IF_ERROR(Norm(L.attn_norm, n, normed));
      MOEND_RETURN_IF_ERROR(Linear(normed.as<void>(), hidden, L.qkv.as<void>(), n, width, hidden, 0.0f,
                                   qkv.as<float>()));
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
      if (bf16()) {
        rp.q16 = q16.as<uint16_t>();
        rp.k16 = k16.as<uint16_t>();
        rp.v16 = v16.as<uint16_t>();
      }
      MOEND_CUDA_RETURN(gpumodel::LaunchRope(rp, stream));
      if (on_layer) {
        MOEND_CUDA_RETURN(cudaStreamSynchronize(stream));
        MOEND_RETURN_IF_ERROR(on_layer(LayerActivations{l, n, q.as<float>(), k.as<float>(), v.as<float>()}));
      }
      if (logits_out == nullptr && l == layer_end - 1) break;  // nothing after this callback is used
      if (options.profile) MOEND_CUDA_RETURN(cudaEventRecord(events[2 * l], stream));
      MOEND_RETURN_IF_ERROR(Attention(n));
      if (options.profile) {
        MOEND_CUDA_RETURN(cudaEventRecord(events[2 * l + 1], stream));
        timed = l + 1;
      }
      // Model::FinishLayer
      MOEND_RETURN_IF_ERROR(Linear(attn.as<void>(), h * d, L.o.as<void>(), n, hidden, h * d, 1.0f, x.as<float>()));
      MOEND_RETURN_IF_ERROR(Norm(L.mlp_norm, n, normed));
      MOEND_RETURN_IF_ERROR(Linear(normed.as<void>(), hidden, L.gate_up.as<void>(), n, 2 * inter, hidden, 0.0f,
                                   gu.as<float>()));
      if (bf16()) {
        MOEND_CUDA_RETURN(gpumodel::LaunchSiluMulBf16(gu.as<float>(), n, static_cast<int>(inter), act.as<uint16_t>(),
                                                      stream));
        MOEND_RETURN_IF_ERROR(Linear(act.as<void>(), inter, L.down.as<void>(), n, hidden, inter, 1.0f, x.as<float>()));
      } else {
        MOEND_CUDA_RETURN(gpumodel::LaunchSiluMul(gu.as<float>(), n, static_cast<int>(inter), stream));
        MOEND_RETURN_IF_ERROR(
            Linear(gu.as<void>(), 2 * inter, L.down.as<void>(), n, hidden, inter, 1.0f, x.as<float>()));
      }
    }
    if (logits_out != nullptr) {
      // Model::Logits
      MOEND_RETURN_IF_ERROR(Norm(final_norm, n, normed));
      MOEND_RETURN_IF_ERROR(Linear(normed.as<void>(), hidden, lm_head.as<void>(), n, c.vocab_size, hidden, 0.0f,
                                   logits.as<float>()));
      logits_out->resize(static_cast<size_t>(n * c.vocab_size));
      MOEND_CUDA_RETURN(cudaMemcpyAsync(logits_out->data(), logits.as<float>(), n * c.vocab_size * 4,
                                        cudaMemcpyDeviceToHost, stream));
    }
    MOEND_CUDA_RETURN(cudaStreamSynchronize(stream));
    for (int64_t l = 0; l < timed; ++l) {
      float ms = 0;
      MOEND_CUDA_RETURN(cudaEventElapsedTime(&ms, events[2 * l], events[2 * l + 1]));
      stats.attention_ms += ms;
    }
    return absl::OkStatus();
  }
};

GpuModel::GpuModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuModel::~GpuModel() = default;

absl::StatusOr<std::unique_ptr<GpuModel>> GpuModel::Create(const Model& model, const GpuModelOptions& options) {
  if (!kernels::CudaDeviceAvailable()) {
    return absl::FailedPreconditionError(absl::StrCat("GPU model: ", kernels::CudaUnavailableReason()));
  }
  if (options.attention_score_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat("GPU model: attention_score_bytes ",
                                                   options.attention_score_bytes, " must be positive"));
  }
  auto impl = std::make_unique<Impl>();
  impl->config = model.config();
  impl->options = options;
  const ModelConfig& c = impl->config;
  MOEND_CUDA_RETURN(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
  MOEND_CUBLAS_RETURN(cublasCreate(&impl->blas));
  MOEND_CUBLAS_RETURN(cublasSetStream(impl->blas, impl->stream));
  // fp32: plain SGEMM (no TF32), so that results match the CPU forward.
  // BF16 GemmEx runs on the tensor cores in this mode too.
  MOEND_CUBLAS_RETURN(cublasSetMathMode(impl->blas, CUBLAS_DEFAULT_MATH));
  if (options.profile) {
    impl->events.resize(static_cast<size_t>(2 * c.num_layers), nullptr);
    for (cudaEvent_t& e : impl->events) MOEND_CUDA_RETURN(cudaEventCreate(&e));
  }
  MOEND_RETURN_IF_ERROR(impl->UploadMatrix(model.embedding(), impl->embed));
  MOEND_RETURN_IF_ERROR(impl->UploadMatrix(model.lm_head(), impl->lm_head));
  MOEND_RETURN_IF_ERROR(impl->Upload(model.final_norm(), impl->final_norm));
  MOEND_RETURN_IF_ERROR(impl->Upload(model.inv_freq(), impl->inv_freq));
  impl->layers = std::make_unique<DeviceLayer[]>(static_cast<size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const Model::LayerWeights w = model.layer_weights(l);
    DeviceLayer& L = impl->layers[static_cast<size_t>(l)];
    MOEND_RETURN_IF_ERROR(impl->Upload(w.attn_norm, L.attn_norm));
    MOEND_RETURN_IF_ERROR(impl->Upload(w.mlp_norm, L.mlp_norm));
    MOEND_RETURN_IF_ERROR(impl->UploadMatrix(w.qkv, L.qkv));
    MOEND_RETURN_IF_ERROR(impl->Upload(w.qkv_bias, L.qkv_bias));
    MOEND_RETURN_IF_ERROR(impl->UploadMatrix(w.o, L.o));
    MOEND_RETURN_IF_ERROR(impl->UploadMatrix(w.gate_up, L.gate_up));
    MOEND_RETURN_IF_ERROR(impl->UploadMatrix(w.down, L.down));
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
const GpuModelOptions& GpuModel::options() const { return impl_->options; }
const GpuModelStats& GpuModel::last_stats() const { return impl_->stats; }

}  // namespace moend::worker

#include "runtime/model.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/gemm.h"
#include "runtime/safetensors.h"
#include "core/status_macros.h"
#include "runtime/vec_math.h"

namespace moend {

struct Model::Layer {
  std::vector<float> attn_norm;  // [hidden]
  std::vector<float> mlp_norm;   // [hidden]
  std::vector<float> qkv;        // [(H + 2 Hkv) * D, hidden]: q, k, v rows stacked
  std::vector<float> qkv_bias;   // [(H + 2 Hkv) * D] or empty
  std::vector<float> o;          // [hidden, H * D]
  std::vector<float> gate_up;    // [2 * I, hidden]: gate rows then up rows
  std::vector<float> down;       // [hidden, I]
};

namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Widens tensor `name` into dst[offset...], checking its shape against `want`.
// `dst` grows only after the check, so its size is bounded by the checkpoint's
// bytes, never by what config.json claims.
absl::Status LoadInto(const Checkpoint& ckpt, const std::string& name,
                      const std::vector<int64_t>& want, std::vector<float>& dst, size_t offset) {
  MOEND_ASSIGN_OR_RETURN(const TensorView* t, ckpt.Get(name));
  if (t->shape != want) {
    return absl::InvalidArgumentError(absl::StrCat(ckpt.FileOf(name), ": tensor ", name,
                                                   " has shape ", ShapeString(t->shape),
                                                   " but config.json implies ", ShapeString(want)));
  }
  const size_t count = static_cast<size_t>(t->num_elements());
  if (dst.size() < offset + count) dst.resize(offset + count);
  ToFloat32(*t, dst.data() + offset);
  size_t first_bad = count;  // threads share the check of a large tensor (a 7B model's are)
#pragma omp parallel for reduction(min : first_bad) if (count > (size_t{1} << 20))
  for (size_t i = 0; i < count; ++i) {
    if (!std::isfinite(dst[offset + i])) first_bad = std::min(first_bad, i);
  }
  if (first_bad < count) {
    return absl::DataLossError(absl::StrCat(ckpt.FileOf(name), ": tensor ", name,
                                            " holds a non-finite value at element ", first_bad));
  }
  return absl::OkStatus();
}

}  // namespace

Model::~Model() = default;

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir,
                                                   const ModelOptions& options) {
  auto model = std::unique_ptr<Model>(new Model());
  MOEND_ASSIGN_OR_RETURN(model->config_, ReadModelConfig(dir));
  const ModelConfig& c = model->config_;
  model->name_ = std::filesystem::path(dir).lexically_normal().filename().string();
  if (model->name_.empty()) {
    model->name_ = std::filesystem::path(dir).lexically_normal().parent_path().filename().string();
  }
  MOEND_ASSIGN_OR_RETURN(auto ckpt, Checkpoint::Open(dir));

  const int64_t hidden = c.hidden_size, d = c.head_dim, h = c.num_heads, hkv = c.num_kv_heads;
  const int64_t inter = c.intermediate_size;
  MOEND_RETURN_IF_ERROR(
      LoadInto(*ckpt, "model.embed_tokens.weight", {c.vocab_size, hidden}, model->embed_, 0));
  MOEND_RETURN_IF_ERROR(LoadInto(*ckpt, "model.norm.weight", {hidden}, model->final_norm_, 0));
  if (!c.tie_word_embeddings) {
    MOEND_RETURN_IF_ERROR(
        LoadInto(*ckpt, "lm_head.weight", {c.vocab_size, hidden}, model->lm_head_, 0));
  }
  // Layers are added as they load, so a config.json that claims billions of
  // layers fails at the first missing tensor instead of allocating them.
  for (int64_t l = 0; l < c.num_layers; ++l) {
    Layer& layer = model->layers_.emplace_back();
    const std::string p = absl::StrCat("model.layers.", l, ".");
    MOEND_RETURN_IF_ERROR(
        LoadInto(*ckpt, p + "input_layernorm.weight", {hidden}, layer.attn_norm, 0));
    MOEND_RETURN_IF_ERROR(
        LoadInto(*ckpt, p + "post_attention_layernorm.weight", {hidden}, layer.mlp_norm, 0));
    MOEND_RETURN_IF_ERROR(LoadInto(*ckpt, p + "self_attn.q_proj.weight", {h * d, hidden},
                                   layer.qkv, 0));
    MOEND_RETURN_IF_ERROR(LoadInto(*ckpt, p + "self_attn.k_proj.weight", {hkv * d, hidden},
                                   layer.qkv, static_cast<size_t>(h * d * hidden)));
    MOEND_RETURN_IF_ERROR(LoadInto(*ckpt, p + "self_attn.v_proj.weight", {hkv * d, hidden},
                                   layer.qkv, static_cast<size_t>((h + hkv) * d * hidden)));
    if (c.qkv_bias) {
      MOEND_RETURN_IF_ERROR(
          LoadInto(*ckpt, p + "self_attn.q_proj.bias", {h * d}, layer.qkv_bias, 0));
      MOEND_RETURN_IF_ERROR(LoadInto(*ckpt, p + "self_attn.k_proj.bias", {hkv * d},
                                     layer.qkv_bias, static_cast<size_t>(h * d)));
      MOEND_RETURN_IF_ERROR(LoadInto(*ckpt, p + "self_attn.v_proj.bias", {hkv * d},
                                     layer.qkv_bias, static_cast<size_t>((h + hkv) * d)));
    }
    MOEND_RETURN_IF_ERROR(
        LoadInto(*ckpt, p + "self_attn.o_proj.weight", {hidden, h * d}, layer.o, 0));
    MOEND_RETURN_IF_ERROR(
        LoadInto(*ckpt, p + "mlp.gate_proj.weight", {inter, hidden}, layer.gate_up, 0));
    MOEND_RETURN_IF_ERROR(LoadInto(*ckpt, p + "mlp.up_proj.weight", {inter, hidden},
                                   layer.gate_up, static_cast<size_t>(inter * hidden)));
    MOEND_RETURN_IF_ERROR(
        LoadInto(*ckpt, p + "mlp.down_proj.weight", {hidden, inter}, layer.down, 0));
  }
  // inv_freq as Hugging Face computes it, in float32: 1 / theta^(2i / D).
  model->inv_freq_.resize(static_cast<size_t>(d / 2));
  for (int64_t i = 0; i < d / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(d);
    model->inv_freq_[static_cast<size_t>(i)] =
        1.0f / std::pow(static_cast<float>(c.rope_theta), e);
  }
  if (options.threads > 0) {
    SetGemmThreads(options.threads);
    omp_set_num_threads(options.threads);
  }
  return model;
}

absl::StatusOr<std::vector<float>> Model::Forward(std::span<const int32_t> tokens,
                                                  const LayerCallback& on_layer) const {
  MOEND_RETURN_IF_ERROR(CheckTokens(config_, tokens));
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t h = c.num_heads, hkv = c.num_kv_heads, d = c.head_dim;
  std::vector<float> x(static_cast<size_t>(n * c.hidden_size));
  std::vector<float> q(static_cast<size_t>(h * n * d)), k(static_cast<size_t>(hkv * n * d)),
      v(static_cast<size_t>(hkv * n * d)), attn(static_cast<size_t>(n * h * d));
  Embed(tokens, x.data());
  for (int64_t l = 0; l < c.num_layers; ++l) {
    AttentionInputs(l, x.data(), n, 0, q.data(), k.data(), v.data());
    if (on_layer) on_layer(LayerActivations{l, n, q.data(), k.data(), v.data()});
    CausalAttention(q.data(), k.data(), v.data(), h, hkv, n, d, attn.data());
    FinishLayer(l, attn.data(), n, x.data());
  }
  std::vector<float> logits(static_cast<size_t>(n * c.vocab_size));
  Logits(x.data(), n, logits.data());
  return logits;
}

absl::Status Model::CheckTokens(const ModelConfig& c, std::span<const int32_t> tokens) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return absl::InvalidArgumentError("forward needs at least one token");
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token ", tokens[i], " at position ", i,
                                                     " is outside the vocabulary [0, ",
                                                     c.vocab_size, ")"));
    }
  }
  if (c.sliding_window > 0 && n > c.sliding_window) {
    return absl::UnimplementedError(absl::StrCat("input of ", n, " tokens exceeds the sliding window (",
                                                 c.sliding_window, "), which is not supported"));
  }
  return absl::OkStatus();
}

Model::LayerWeights Model::layer_weights(int64_t layer) const {
  const Layer& L = layers_[static_cast<size_t>(layer)];
  return LayerWeights{L.attn_norm, L.mlp_norm, L.qkv, L.qkv_bias, L.o, L.gate_up, L.down};
}

std::span<const float> Model::lm_head() const {
  return config_.tie_word_embeddings ? std::span<const float>(embed_)
                                      : std::span<const float>(lm_head_);
}

void Model::Embed(std::span<const int32_t> tokens, float* x) const {
  const int64_t hidden = config_.hidden_size;
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::copy_n(embed_.data() + static_cast<int64_t>(tokens[i]) * hidden, hidden,
                x + static_cast<int64_t>(i) * hidden);
  }
}

void Model::RmsNorm(const float* x, const float* weight, int64_t n, float* out) const {
  const int64_t hidden = config_.hidden_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
#pragma omp parallel for schedule(static) if (n > 64)
  for (int64_t t = 0; t < n; ++t) {
    const float* row = x + t * hidden;
    float ss = 0;
    for (int64_t i = 0; i < hidden; ++i) ss += row[i] * row[i];
    const float scale = 1.0f / std::sqrt(ss / static_cast<float>(hidden) + eps);
    float* o = out + t * hidden;
    for (int64_t i = 0; i < hidden; ++i) o[i] = weight[i] * (row[i] * scale);
  }
}

void Model::AttentionInputs(int64_t layer, const float* x, int64_t n, int64_t pos0, float* q,
                            float* k, float* v) const {
  std::vector<int64_t> positions(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) positions[static_cast<size_t>(t)] = pos0 + t;
  AttentionInputsAt(layer, x, n, positions.data(), q, k, v);
}

void Model::AttentionInputsAt(int64_t layer, const float* x, int64_t n, const int64_t* positions,
                              float* q, float* k, float* v) const {
  const ModelConfig& c = config_;
  const Layer& L = layers_[static_cast<size_t>(layer)];
  const int64_t h = c.num_heads, hkv = c.num_kv_heads, d = c.head_dim, hidden = c.hidden_size;
  const int64_t width = (h + 2 * hkv) * d;
  std::vector<float> normed(static_cast<size_t>(n * hidden));
  std::vector<float> qkv(static_cast<size_t>(n * width));
  RmsNorm(x, L.attn_norm.data(), n, normed.data());
  Gemm(Transpose::kYes, n, width, hidden, 1.0f, normed.data(), hidden, L.qkv.data(), hidden, 0.0f,
       qkv.data(), width);
  const int64_t half = d / 2;
#pragma omp parallel for schedule(static) if (n > 64)
  for (int64_t t = 0; t < n; ++t) {
    float* row = qkv.data() + t * width;
    if (!L.qkv_bias.empty()) {
      for (int64_t i = 0; i < width; ++i) row[i] += L.qkv_bias[static_cast<size_t>(i)];
    }
    // Rotate-half RoPE on q and k heads, in float32 as Hugging Face does.
    float cosv[512], sinv[512];  // D / 2 <= 512: ParseModelConfig caps head_dim at 1024
    const float pos = static_cast<float>(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq_[static_cast<size_t>(i)];
      cosv[i] = std::cos(angle);
      sinv[i] = std::sin(angle);
    }
    for (int64_t head = 0; head < h + hkv; ++head) {
      float* src = row + head * d;
      float* dst = head < h ? q + (head * n + t) * d : k + ((head - h) * n + t) * d;
      for (int64_t i = 0; i < half; ++i) {
        const float a = src[i], b = src[i + half];
        dst[i] = a * cosv[i] - b * sinv[i];
        dst[i + half] = b * cosv[i] + a * sinv[i];
      }
    }
    for (int64_t head = 0; head < hkv; ++head) {
      std::copy_n(row + (h + hkv + head) * d, d, v + (head * n + t) * d);
    }
  }
}

void Model::CausalAttention(const float* q, const float* k, const float* v, int64_t num_heads,
                            int64_t num_kv_heads, int64_t n, int64_t head_dim, float* out,
                            int64_t q_begin, int64_t q_end) {
  // Work items are (head, block of kBlock queries); each computes its scores
  // against the keys it can see with one matrix product, softmaxes them and
  // multiplies by V. Inside the parallel loop the (OpenMP) BLAS runs
  // single-threaded, so the items are the unit of parallelism.
  constexpr int64_t kBlock = 64;
  const int64_t group = num_heads / num_kv_heads;
  if (q_end < 0) q_end = n;
  const int64_t blocks = (q_end - q_begin + kBlock - 1) / kBlock;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
#pragma omp parallel
  {
    std::vector<float> scores(static_cast<size_t>(std::min(q_end - q_begin, kBlock) * q_end));
    // Largest blocks (latest queries) first for load balance.
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < num_heads * blocks; ++item) {
      const int64_t head = item % num_heads;
      const int64_t q0 = q_begin + (blocks - 1 - item / num_heads) * kBlock;
      const int64_t rows = std::min(kBlock, q_end - q0);
      const int64_t keys = q0 + rows;  // causal: this block sees keys [0, q0 + rows)
      const float* kh = k + (head / group) * n * head_dim;
      const float* vh = v + (head / group) * n * head_dim;
      // scores[rows, keys] = scale * Q_blk K^T
      Gemm(Transpose::kYes, rows, keys, head_dim, scale, q + (head * n + q0) * head_dim, head_dim,
           kh, head_dim, 0.0f, scores.data(), keys);
      for (int64_t r = 0; r < rows; ++r) SoftmaxRow(scores.data() + r * keys, q0 + r + 1, keys);
      // out[q0 + r, head * D ...] = P V
      Gemm(Transpose::kNo, rows, head_dim, keys, 1.0f, scores.data(), keys, vh, head_dim, 0.0f,
           out + q0 * num_heads * head_dim + head * head_dim, num_heads * head_dim);
    }
  }
}

void Model::FinishLayer(int64_t layer, const float* attn, int64_t n, float* x) const {
  const ModelConfig& c = config_;
  const Layer& L = layers_[static_cast<size_t>(layer)];
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size;
  const int64_t hd = c.num_heads * c.head_dim;
  Gemm(Transpose::kYes, n, hidden, hd, 1.0f, attn, hd, L.o.data(), hd, 1.0f, x, hidden);
  std::vector<float> normed(static_cast<size_t>(n * hidden));
  std::vector<float> gu(static_cast<size_t>(n * 2 * inter));
  RmsNorm(x, L.mlp_norm.data(), n, normed.data());
  Gemm(Transpose::kYes, n, 2 * inter, hidden, 1.0f, normed.data(), hidden, L.gate_up.data(),
       hidden, 0.0f, gu.data(), 2 * inter);
#pragma omp parallel for schedule(static) if (n > 64)
  for (int64_t t = 0; t < n; ++t) {
    float* row = gu.data() + t * 2 * inter;
    SiluMul(row, row + inter, inter);  // silu(gate) * up, in place
  }
  Gemm(Transpose::kYes, n, hidden, inter,
       1.0f, gu.data(), 2 * inter, L.down.data(), inter, 1.0f, x, hidden);
}

void Model::Logits(const float* x, int64_t n, float* logits) const {
  const ModelConfig& c = config_;
  std::vector<float> normed(static_cast<size_t>(n * c.hidden_size));
  RmsNorm(x, final_norm_.data(), n, normed.data());
  const std::vector<float>& head = c.tie_word_embeddings ? embed_ : lm_head_;
  Gemm(Transpose::kYes, n, c.vocab_size, c.hidden_size, 1.0f, normed.data(), c.hidden_size,
       head.data(), c.hidden_size, 0.0f, logits, c.vocab_size);
}

}  // namespace moend

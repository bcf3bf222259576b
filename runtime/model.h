// A Llama-family decoder (Llama, Mistral, Qwen2: RMSNorm, rotate-half RoPE,
// GQA, SwiGLU, optional q/k/v bias) loaded from a Hugging Face folder, with a
// float32 CPU forward pass.
//
// Besides the whole prefill (Forward), the per-layer steps are public so that
// callers can run attention over their own cache (the compressed cache of
// kernels/): Embed -> for each layer {AttentionInputs, attention, FinishLayer}
// -> Logits.
#ifndef MOEND_RUNTIME_MODEL_H_
#define MOEND_RUNTIME_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/model_config.h"

namespace moend {

// One layer's attention inputs for n tokens, head-major:
// q: [num_heads, n, head_dim]; k, v: [num_kv_heads, n, head_dim].
// q and k are after RoPE (k exactly as a KV cache holds it).
struct LayerActivations {
  int64_t layer = 0;
  int64_t tokens = 0;
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
};
using LayerCallback = std::function<void(const LayerActivations&)>;

struct ModelOptions {
  // Threads for the matrix products; 0 = library default (all cores).
  int threads = 0;
};

class Model {
 public:
  // Reads config.json and the safetensors checkpoint of `dir`, checks every
  // tensor's presence and shape against the config, widens weights to float32.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir,
                                                     const ModelOptions& options = {});
  ~Model();

  const ModelConfig& config() const { return config_; }
  // The folder's base name ("tinycode").
  const std::string& name() const { return name_; }

  // Full causal prefill. Returns logits [n, vocab]. `on_layer`, if set, sees
  // each layer's q, k, v. Token ids must be in [0, vocab).
  absl::StatusOr<std::vector<float>> Forward(std::span<const int32_t> tokens,
                                             const LayerCallback& on_layer = nullptr) const;
  // What a forward of a model with `config` accepts: at least one token, ids
  // in [0, vocab), no more tokens than a sliding window (unsupported).
  // InvalidArgument / Unimplemented naming the offending token or length.
  static absl::Status CheckTokens(const ModelConfig& config, std::span<const int32_t> tokens);

  // --- The float32 weights, for other implementations of the forward
  // (worker/gpu_model.h). Row-major, laid out as the building blocks use them.
  struct LayerWeights {
    std::span<const float> attn_norm;  // [hidden]
    std::span<const float> mlp_norm;   // [hidden]
    std::span<const float> qkv;        // [(H + 2 Hkv) * D, hidden]: q, k, v rows stacked
    std::span<const float> qkv_bias;   // [(H + 2 Hkv) * D] or empty
    std::span<const float> o;          // [hidden, H * D]
    std::span<const float> gate_up;    // [2 * I, hidden]: gate rows then up rows
    std::span<const float> down;       // [hidden, I]
  };
  LayerWeights layer_weights(int64_t layer) const;
  std::span<const float> embedding() const { return embed_; }  // [vocab, hidden]
  // [vocab, hidden]: the embedding when the config ties them.
  std::span<const float> lm_head() const;
  std::span<const float> final_norm() const { return final_norm_; }  // [hidden]
  // RoPE inverse frequencies [D / 2], float32 as Hugging Face computes them.
  std::span<const float> inv_freq() const { return inv_freq_; }

  // --- Building blocks (sizes are the caller's responsibility) ---
  // x: [n, hidden] = embedding rows of `tokens` (ids already validated).
  void Embed(std::span<const int32_t> tokens, float* x) const;
  // From the residual stream x [n, hidden] of positions pos0..pos0+n-1:
  // q [H, n, D], k [Hkv, n, D] (after RoPE) and v [Hkv, n, D].
  void AttentionInputs(int64_t layer, const float* x, int64_t n, int64_t pos0, float* q, float* k,
                       float* v) const;
  // The same for rows at arbitrary positions (a batch of sequences):
  // row t sits at positions[t].
  void AttentionInputsAt(int64_t layer, const float* x, int64_t n, const int64_t* positions,
                         float* q, float* k, float* v) const;
  // x += o_proj(attn) then x += mlp(norm(x)); attn: [n, H * D] token-major.
  void FinishLayer(int64_t layer, const float* attn, int64_t n, float* x) const;
  // logits [n, vocab] = lm_head(norm(x)).
  void Logits(const float* x, int64_t n, float* logits) const;

  // Exact causal softmax attention, GQA. q [H, n, D]; k, v [Hkv, n, D];
  // out [n, H * D] token-major. Query i attends keys 0..i. Only query rows
  // [q_begin, q_end) are computed (default: all); they are processed in
  // blocks of 64 from q_begin, so when q_begin is a multiple of 64 a range
  // gives exactly the rows of the whole call.
  static void CausalAttention(const float* q, const float* k, const float* v, int64_t num_heads,
                              int64_t num_kv_heads, int64_t n, int64_t head_dim, float* out,
                              int64_t q_begin = 0, int64_t q_end = -1);

 private:
  struct Layer;
  Model() = default;
  void RmsNorm(const float* x, const float* weight, int64_t n, float* out) const;

  ModelConfig config_;
  std::string name_;
  std::vector<float> embed_;    // [vocab, hidden]
  std::vector<float> lm_head_;  // [vocab, hidden]; empty when tied
  std::vector<float> final_norm_;
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_;  // [D / 2]
};

}  // namespace moend

#endif  // MOEND_RUNTIME_MODEL_H_

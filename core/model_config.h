// The architecture of a Llama-family model, read from a Hugging Face config.json.
#ifndef MOEND_CORE_MODEL_CONFIG_H_
#define MOEND_CORE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace moend {

struct ModelConfig {
  std::string model_type;       // llama, mistral or qwen2
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;     // default: num_heads
  int64_t head_dim = 0;         // default: hidden_size / num_heads
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;        // qwen2 always; llama/mistral when attention_bias
  int64_t sliding_window = 0;   // 0 = none; longer inputs are rejected
  int64_t max_position_embeddings = 0;
};

// Parses and validates config.json text. Unsupported architectures,
// activations or RoPE scaling are Unimplemented; missing or inconsistent
// fields are InvalidArgument. `source` names the file in messages.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source);
absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& model_dir);

}  // namespace moend

#endif  // MOEND_CORE_MODEL_CONFIG_H_

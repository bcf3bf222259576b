// Reads a model's architecture shape from its Hugging Face config.json.
#ifndef MOEND_SERVICES_REGISTRY_MODEL_CONFIG_H_
#define MOEND_SERVICES_REGISTRY_MODEL_CONFIG_H_

#include <string>

#include "absl/status/statusor.h"
#include "services/registry/registry_types.h"

namespace moend::registry {

// Fields: num_hidden_layers, num_attention_heads (required);
// num_key_value_heads (default num_attention_heads), head_dim (default
// hidden_size / num_attention_heads), hidden_size, intermediate_size,
// vocab_size, max_position_embeddings, architectures[0], model_type.
// InvalidArgument naming the field when one is missing or out of range.
absl::StatusOr<ModelShape> ModelShapeFromConfigJson(const std::string& config_json);

}  // namespace moend::registry

#endif  // MOEND_SERVICES_REGISTRY_MODEL_CONFIG_H_

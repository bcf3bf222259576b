#include "services/registry/model_config.h"

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace moend::registry {
namespace {

// An integer field; `fallback` when absent or null (-1 = required).
absl::StatusOr<int64_t> IntField(const nlohmann::json& j, const char* name, int64_t fallback) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) {
    if (fallback >= 0) return fallback;
    return absl::InvalidArgumentError(absl::StrCat("config.json has no \"", name, "\""));
  }
  if (!it->is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json \"", name, "\" must be an integer, got ", it->dump()));
  }
  return it->get<int64_t>();
}

// A Hugging Face config.json is a few KB and a few levels deep. Bigger or
// deeper text is refused before it is parsed: a megabyte of "[" parses into
// a million nested arrays (~80 MB of nodes).
constexpr size_t kMaxConfigBytes = 256 << 10;
constexpr int kMaxConfigDepth = 32;

absl::Status CheckConfigSize(const std::string& text) {
  if (text.size() > kMaxConfigBytes) {
    return absl::InvalidArgumentError(absl::StrCat("config.json is ", text.size(),
                                                   " bytes; at most ", kMaxConfigBytes,
                                                   " are accepted"));
  }
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxConfigDepth) {
        return absl::InvalidArgumentError(absl::StrCat(
            "config.json nests deeper than ", kMaxConfigDepth, " levels"));
      }
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelShape> ModelShapeFromConfigJson(const std::string& config_json) {
  if (absl::Status size = CheckConfigSize(config_json); !size.ok()) return size;
  nlohmann::json j = nlohmann::json::parse(config_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("config.json is not a JSON object");
  }
  ModelShape shape;
  auto layers = IntField(j, "num_hidden_layers", -1);
  if (!layers.ok()) return layers.status();
  auto heads = IntField(j, "num_attention_heads", -1);
  if (!heads.ok()) return heads.status();
  shape.num_layers = *layers;
  shape.num_attention_heads = *heads;
  if (shape.num_layers <= 0 || shape.num_layers > 100000) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_hidden_layers ", shape.num_layers, " is outside [1, 100000]"));
  }
  if (shape.num_attention_heads <= 0 || shape.num_attention_heads > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("num_attention_heads ",
                                                   shape.num_attention_heads,
                                                   " is outside [1, 4096]"));
  }
  struct {
    const char* name;
    int64_t* out;
    int64_t fallback;
  } optional_fields[] = {
      {"num_key_value_heads", &shape.num_kv_heads, shape.num_attention_heads},
      {"hidden_size", &shape.hidden_size, 0},
      {"intermediate_size", &shape.intermediate_size, 0},
      {"vocab_size", &shape.vocab_size, 0},
      {"max_position_embeddings", &shape.max_position_embeddings, 0},
  };
  for (auto& f : optional_fields) {
    auto v = IntField(j, f.name, f.fallback);
    if (!v.ok()) return v.status();
    *f.out = *v;
  }
  int64_t default_head_dim =
      shape.hidden_size > 0 ? shape.hidden_size / shape.num_attention_heads : 0;
  auto head_dim = IntField(j, "head_dim", default_head_dim);
  if (!head_dim.ok()) return head_dim.status();
  shape.head_dim = *head_dim;
  if (shape.num_kv_heads <= 0 || shape.num_attention_heads % shape.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_key_value_heads ", shape.num_kv_heads, " must be positive and divide ",
        "num_attention_heads ", shape.num_attention_heads));
  }
  if (shape.head_dim <= 0 || shape.head_dim % 8 != 0 || shape.head_dim > 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim ", shape.head_dim,
        " must be a positive multiple of 8 up to 4096 (give head_dim or hidden_size)"));
  }
  if (auto it = j.find("architectures"); it != j.end() && it->is_array() && !it->empty() &&
                                         (*it)[0].is_string()) {
    shape.architecture = (*it)[0].get<std::string>();
  }
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) {
    shape.model_type = it->get<std::string>();
  }
  return shape;
}

}  // namespace moend::registry

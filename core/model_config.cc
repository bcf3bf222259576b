#include "core/model_config.h"

#include <cstdint>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace moend {
namespace {

using nlohmann::json;

absl::StatusOr<int64_t> PositiveInt(const json& j, const std::string& key,
                                    const std::string& source, std::optional<int64_t> fallback) {
  if (!j.contains(key) || j[key].is_null()) {
    if (fallback) return *fallback;
    return absl::InvalidArgumentError(absl::StrCat(source, ": missing ", key));
  }
  if (!j[key].is_number_integer() || j[key].get<int64_t>() <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", key, " must be a positive integer, got ", j[key].dump()));
  }
  return j[key].get<int64_t>();
}

absl::StatusOr<double> PositiveNumber(const json& j, const std::string& key,
                                      const std::string& source, double fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number() || !(j[key].get<double>() > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", key, " must be a positive number, got ", j[key].dump()));
  }
  return j[key].get<double>();
}

bool BoolOr(const json& j, const std::string& key, bool fallback) {
  return j.contains(key) && j[key].is_boolean() ? j[key].get<bool>() : fallback;
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  ModelConfig c;
  if (!j.contains("model_type") || !j["model_type"].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": missing model_type"));
  }
  c.model_type = j["model_type"].get<std::string>();
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
    return absl::UnimplementedError(absl::StrCat(source, ": architecture '", c.model_type,
                                                 "' is not supported (llama, mistral, qwen2)"));
  }
  const std::string act = j.contains("hidden_act") && j["hidden_act"].is_string()
                              ? j["hidden_act"].get<std::string>()
                              : "silu";
  if (act != "silu") {
    return absl::UnimplementedError(
        absl::StrCat(source, ": hidden_act '", act, "' is not supported (silu)"));
  }
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": rope_scaling is not supported (plain RoPE only)"));
  }
  MOEND_ASSIGN_OR_RETURN(c.vocab_size, PositiveInt(j, "vocab_size", source, std::nullopt));
  MOEND_ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(j, "hidden_size", source, std::nullopt));
  MOEND_ASSIGN_OR_RETURN(c.intermediate_size,
                         PositiveInt(j, "intermediate_size", source, std::nullopt));
  MOEND_ASSIGN_OR_RETURN(c.num_layers, PositiveInt(j, "num_hidden_layers", source, std::nullopt));
  MOEND_ASSIGN_OR_RETURN(c.num_heads, PositiveInt(j, "num_attention_heads", source, std::nullopt));
  MOEND_ASSIGN_OR_RETURN(c.num_kv_heads, PositiveInt(j, "num_key_value_heads", source, c.num_heads));
  // Far above any real model, and low enough that the loader's and the
  // forward pass's products of sizes (e.g. heads x head_dim x hidden) stay
  // inside int64.
  constexpr int64_t kMaxSize = int64_t{1} << 24;
  for (const auto& [field, value] :
       {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
        {"hidden_size", c.hidden_size},
        {"intermediate_size", c.intermediate_size},
        {"num_hidden_layers", c.num_layers},
        {"num_attention_heads", c.num_heads},
        {"num_key_value_heads", c.num_kv_heads}}) {
    if (value > kMaxSize) {
      return absl::UnimplementedError(
          absl::StrCat(source, ": ", field, " ", value, " is above the supported ", kMaxSize));
    }
  }
  if (c.hidden_size % c.num_heads != 0 && !(j.contains("head_dim") && !j["head_dim"].is_null())) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": hidden_size ", c.hidden_size,
                                                   " is not divisible by num_attention_heads ",
                                                   c.num_heads, " and no head_dim is given"));
  }
  MOEND_ASSIGN_OR_RETURN(c.head_dim,
                         PositiveInt(j, "head_dim", source, c.hidden_size / c.num_heads));
  MOEND_ASSIGN_OR_RETURN(c.rms_norm_eps, PositiveNumber(j, "rms_norm_eps", source, 1e-6));
  MOEND_ASSIGN_OR_RETURN(c.rope_theta, PositiveNumber(j, "rope_theta", source, 10000.0));
  MOEND_ASSIGN_OR_RETURN(c.max_position_embeddings,
                         PositiveInt(j, "max_position_embeddings", source, int64_t{0}));
  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": num_attention_heads ", c.num_heads,
                                                   " is not a multiple of num_key_value_heads ",
                                                   c.num_kv_heads));
  }
  if (c.head_dim > 1024) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": head_dim ", c.head_dim, " is above the supported 1024"));
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": head_dim ", c.head_dim, " must be even for RoPE"));
  }
  c.tie_word_embeddings = BoolOr(j, "tie_word_embeddings", false);
  c.qkv_bias = c.model_type == "qwen2" ? true : BoolOr(j, "attention_bias", false);
  if (BoolOr(j, "mlp_bias", false)) {
    return absl::UnimplementedError(absl::StrCat(source, ": mlp_bias is not supported"));
  }
  const bool sliding = c.model_type == "qwen2" ? BoolOr(j, "use_sliding_window", false) : true;
  if (sliding && j.contains("sliding_window") && j["sliding_window"].is_number_integer()) {
    // 0 means none; a negative (or, read as int64, wrapped) window would
    // silently mean none too.
    const json& w = j["sliding_window"];
    if (w.is_number_unsigned() ? w.get<uint64_t>() > uint64_t{INT64_MAX} : w.get<int64_t>() < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": sliding_window must be a positive integer or 0 (none), got ", w.dump()));
    }
    c.sliding_window = w.get<int64_t>();
  }
  return c;
}

absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  MOEND_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseModelConfig(text, path);
}

}  // namespace moend

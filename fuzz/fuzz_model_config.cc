// Fuzzes ParseModelConfig (core/model_config.h): the input is config.json
// text. What it accepts must satisfy the contract the model loader and the
// registry rely on.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/model_config.h"
#include "fuzz/fuzz_util.h"

namespace {

std::vector<moend::fuzz::Seed> MakeSeeds() {
  return {
      {"tinycode_config.json", moend::fuzz::ReadSourceFile("models/tinycode/config.json")},
      {"qwen2.json",
       R"({"model_type":"qwen2","vocab_size":151936,"hidden_size":896,"intermediate_size":4864,)"
       R"("num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,)"
       R"("rms_norm_eps":1e-06,"rope_theta":1000000.0,"max_position_embeddings":32768,)"
       R"("sliding_window":32768,"use_sliding_window":false,"tie_word_embeddings":true,)"
       R"("hidden_act":"silu","rope_scaling":null})"},
      {"mistral.json",
       R"({"model_type":"mistral","vocab_size":32000,"hidden_size":4096,)"
       R"("intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,)"
       R"("num_key_value_heads":8,"head_dim":128,"sliding_window":4096,)"
       R"("attention_bias":true,"mlp_bias":false})"},
  };
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  moend::fuzz::MaybeWriteSeeds(*argc, *argv, MakeSeeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = moend::ParseModelConfig(text, "fuzz/config.json");
  if (!config.ok()) {
    FUZZ_CHECK(!config.status().message().empty(), "an error without a message");
    return 0;
  }
  const moend::ModelConfig& c = *config;
  FUZZ_CHECK(c.model_type == "llama" || c.model_type == "mistral" || c.model_type == "qwen2",
             "accepted model_type " + c.model_type);
  FUZZ_CHECK(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 &&
                 c.num_layers > 0 && c.num_heads > 0 && c.num_kv_heads > 0 && c.head_dim > 0,
             "a size that is not positive");
  constexpr int64_t kMaxSize = int64_t{1} << 24;
  FUZZ_CHECK(c.vocab_size <= kMaxSize && c.hidden_size <= kMaxSize &&
                 c.intermediate_size <= kMaxSize && c.num_layers <= kMaxSize &&
                 c.num_heads <= kMaxSize && c.num_kv_heads <= kMaxSize,
             "a size above 2^24 accepted (the loader's products could overflow)");
  FUZZ_CHECK(c.num_heads % c.num_kv_heads == 0, "num_heads not a multiple of num_kv_heads");
  FUZZ_CHECK(c.head_dim <= 1024 && c.head_dim % 2 == 0,
             absl::StrCat("head_dim ", c.head_dim, " accepted"));
  FUZZ_CHECK(c.rms_norm_eps > 0 && c.rope_theta > 0, "eps or theta not positive");
  FUZZ_CHECK(c.max_position_embeddings >= 0, "negative max_position_embeddings");
  FUZZ_CHECK(c.sliding_window >= 0,
             absl::StrCat("sliding_window ", c.sliding_window, " accepted (0 = none)"));
  return 0;
}

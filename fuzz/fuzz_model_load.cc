// Fuzzes Model::Load (runtime/model.h) on a whole model folder: config.json and
// model.safetensors together, so that what the config claims meets what the
// checkpoint holds. Input: a 2-byte little-endian length L, then L bytes of
// config.json (cut short if the input is), then the safetensors file. A model
// that loads runs a forward pass over three tokens.
//
// Memory must stay bounded by the checkpoint's bytes whatever the config
// says (libFuzzer's -rss_limit_mb catches a loader that believes it).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/fp16.h"
#include "runtime/model.h"
#include "fuzz/fuzz_util.h"
#include "nlohmann/json.hpp"

namespace {

namespace fs = std::filesystem;

// One model folder per process, rewritten for each input.
const std::string& ModelDir() {
  static const std::string* dir = [] {
    const char* base = fs::is_directory("/dev/shm") ? "/dev/shm" : std::getenv("TMPDIR");
    std::string pattern = absl::StrCat(base != nullptr ? base : "/tmp", "/fuzz_model.XXXXXX");
    if (::mkdtemp(pattern.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    std::atexit([] { fs::remove_all(ModelDir()); });
    return new std::string(pattern);
  }();
  return *dir;
}

void WriteFile(const std::string& path, const char* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data, static_cast<std::streamsize>(size));
  if (!out) {
    std::perror(path.c_str());
    std::abort();
  }
}

// A tiny llama: vocab 8, hidden 16, 2 heads / 1 KV head of dim 8, MLP 8, one
// layer; `tied` drops lm_head, `qwen2` adds the q/k/v biases.
std::string TinyModel(bool tied, bool qwen2) {
  nlohmann::json config = {{"model_type", qwen2 ? "qwen2" : "llama"},
                           {"vocab_size", 8},
                           {"hidden_size", 16},
                           {"intermediate_size", 8},
                           {"num_hidden_layers", 1},
                           {"num_attention_heads", 2},
                           {"num_key_value_heads", 1},
                           {"head_dim", 8},
                           {"tie_word_embeddings", tied}};
  std::vector<std::pair<std::string, std::vector<int64_t>>> tensors = {
      {"model.embed_tokens.weight", {8, 16}},
      {"model.norm.weight", {16}},
      {"model.layers.0.input_layernorm.weight", {16}},
      {"model.layers.0.post_attention_layernorm.weight", {16}},
      {"model.layers.0.self_attn.q_proj.weight", {16, 16}},
      {"model.layers.0.self_attn.k_proj.weight", {8, 16}},
      {"model.layers.0.self_attn.v_proj.weight", {8, 16}},
      {"model.layers.0.self_attn.o_proj.weight", {16, 16}},
      {"model.layers.0.mlp.gate_proj.weight", {8, 16}},
      {"model.layers.0.mlp.up_proj.weight", {8, 16}},
      {"model.layers.0.mlp.down_proj.weight", {16, 8}}};
  if (!tied) tensors.push_back({"lm_head.weight", {8, 16}});
  if (qwen2) {
    tensors.push_back({"model.layers.0.self_attn.q_proj.bias", {16}});
    tensors.push_back({"model.layers.0.self_attn.k_proj.bias", {8}});
    tensors.push_back({"model.layers.0.self_attn.v_proj.bias", {8}});
  }
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& [name, shape] : tensors) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const size_t begin = data.size();
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t h = moend::FloatToHalf(0.05f * static_cast<float>((i * 7 + name.size()) % 11) - 0.25f);
      data.append(reinterpret_cast<const char*>(&h), 2);
    }
    header[name] = {{"dtype", "F16"}, {"shape", shape}, {"data_offsets", {begin, data.size()}}};
  }
  const std::string c = config.dump();
  const std::string h = header.dump();
  std::string out;
  out.push_back(static_cast<char>(c.size() & 0xff));
  out.push_back(static_cast<char>(c.size() >> 8));
  out += c;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((uint64_t{h.size()} >> (8 * i)) & 0xff));
  return out + h + data;
}

std::vector<moend::fuzz::Seed> MakeSeeds() {
  return {{"tiny_llama", TinyModel(false, false)},
          {"tiny_llama_tied", TinyModel(true, false)},
          {"tiny_qwen2", TinyModel(false, true)}};
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  moend::fuzz::MaybeWriteSeeds(*argc, *argv, MakeSeeds);
  ModelDir();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t config_len = std::min<size_t>(data[0] | (size_t{data[1]} << 8), size - 2);
  const char* bytes = reinterpret_cast<const char*>(data);
  const std::string& dir = ModelDir();
  WriteFile(dir + "/config.json", bytes + 2, config_len);
  WriteFile(dir + "/model.safetensors", bytes + 2 + config_len, size - 2 - config_len);
  auto model = moend::Model::Load(dir, {.threads = 1});
  if (!model.ok()) {
    FUZZ_CHECK(!model.status().message().empty(), "an error without a message");
    return 0;
  }
  const int32_t tokens[] = {0, 1, 2};
  auto logits = (*model)->Forward(tokens);
  if (!logits.ok()) {
    FUZZ_CHECK(!logits.status().message().empty(), "an error without a message");
    return 0;
  }
  FUZZ_CHECK(static_cast<int64_t>(logits->size()) == 3 * (*model)->config().vocab_size,
             "logits are not [tokens, vocab]");
  return 0;
}

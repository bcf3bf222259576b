// Model loading: every kind of bad checkpoint is a clear error naming the file
// and tensor; F32/F16/BF16, sharded and tied checkpoints load and agree.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/file_util.h"
#include "runtime/model.h"
#include "runtime/safetensors.h"
#include "nlohmann/json.hpp"

namespace moend {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A tensor to write: name, dtype string, shape, raw bytes.
struct RawTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// Writes a safetensors file from `tensors`, in name order, contiguous.
void WriteSafetensors(const std::string& path, const std::map<std::string, RawTensor>& tensors,
                      const std::function<void(json&)>& edit_header = nullptr) {
  json header = json::object();
  std::string data;
  for (const auto& [name, t] : tensors) {
    header[name] = {{"dtype", t.dtype},
                    {"shape", t.shape},
                    {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  if (edit_header) edit_header(header);
  std::string h = header.dump();
  uint64_t len = h.size();
  std::string out(reinterpret_cast<const char*>(&len), 8);
  out += h;
  out += data;
  ASSERT_TRUE(WriteFileAtomic(path, out).ok());
}

std::string EncodeAs(const std::string& dtype, const std::vector<float>& values) {
  std::string out;
  for (float f : values) {
    if (dtype == "F32") {
      out.append(reinterpret_cast<const char*>(&f), 4);
    } else if (dtype == "F16") {
      uint16_t h = FloatToHalf(f);
      out.append(reinterpret_cast<const char*>(&h), 2);
    } else {  // BF16, truncating: test values are chosen exactly representable
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      uint16_t h = static_cast<uint16_t>(bits >> 16);
      out.append(reinterpret_cast<const char*>(&h), 2);
    }
  }
  return out;
}

// A tiny random model: hidden 32, 4 heads / 2 kv heads of dim 8, 2 layers.
struct TinySpec {
  std::string model_type = "llama";
  bool bias = false;
  bool tied = false;
  std::string dtype = "BF16";
};

json TinyConfig(const TinySpec& spec) {
  json c = {{"model_type", spec.model_type},
            {"vocab_size", 256},
            {"hidden_size", 32},
            {"intermediate_size", 48},
            {"num_hidden_layers", 2},
            {"num_attention_heads", 4},
            {"num_key_value_heads", 2},
            {"head_dim", 8},
            {"rms_norm_eps", 1e-5},
            {"rope_theta", 10000.0},
            {"hidden_act", "silu"},
            {"tie_word_embeddings", spec.tied}};
  if (spec.model_type == "llama") c["attention_bias"] = spec.bias;
  return c;
}

// Random values exactly representable in bf16 and f16 (8 significant bits, small range).
std::vector<float> RandomValues(size_t n, std::mt19937& rng, float scale) {
  std::uniform_int_distribution<int> dist(-127, 127);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(dist(rng)) / 128.0f * scale;
  return v;
}

std::map<std::string, std::vector<float>> TinyWeights(const TinySpec& spec, uint32_t seed) {
  // Each tensor's values depend only on its name, so specs that add or drop
  // tensors (bias, tied head) share every other weight.
  std::map<std::string, std::vector<float>> w;
  std::mt19937 rng;
  auto for_name = [&](const std::string& name) -> std::mt19937& {
    rng.seed(seed ^ static_cast<uint32_t>(std::hash<std::string>{}(name)));
    return rng;
  };
  w["model.embed_tokens.weight"] = RandomValues(256 * 32, for_name("model.embed_tokens.weight"), 1.0f);
  w["model.norm.weight"] = RandomValues(32, for_name("model.norm.weight"), 1.0f);
  if (!spec.tied) w["lm_head.weight"] = RandomValues(256 * 32, for_name("lm_head.weight"), 0.5f);
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    w[p + "input_layernorm.weight"] = RandomValues(32, for_name(p + "input_layernorm.weight"), 1.0f);
    w[p + "post_attention_layernorm.weight"] = RandomValues(32, for_name(p + "post_attention_layernorm.weight"), 1.0f);
    w[p + "self_attn.q_proj.weight"] = RandomValues(32 * 32, for_name(p + "self_attn.q_proj.weight"), 0.5f);
    w[p + "self_attn.k_proj.weight"] = RandomValues(16 * 32, for_name(p + "self_attn.k_proj.weight"), 0.5f);
    w[p + "self_attn.v_proj.weight"] = RandomValues(16 * 32, for_name(p + "self_attn.v_proj.weight"), 0.5f);
    w[p + "self_attn.o_proj.weight"] = RandomValues(32 * 32, for_name(p + "self_attn.o_proj.weight"), 0.25f);
    w[p + "mlp.gate_proj.weight"] = RandomValues(48 * 32, for_name(p + "mlp.gate_proj.weight"), 0.25f);
    w[p + "mlp.up_proj.weight"] = RandomValues(48 * 32, for_name(p + "mlp.up_proj.weight"), 0.25f);
    w[p + "mlp.down_proj.weight"] = RandomValues(32 * 48, for_name(p + "mlp.down_proj.weight"), 0.25f);
    if (spec.bias) {
      w[p + "self_attn.q_proj.bias"] = RandomValues(32, for_name(p + "self_attn.q_proj.bias"), 0.5f);
      w[p + "self_attn.k_proj.bias"] = RandomValues(16, for_name(p + "self_attn.k_proj.bias"), 0.5f);
      w[p + "self_attn.v_proj.bias"] = RandomValues(16, for_name(p + "self_attn.v_proj.bias"), 0.5f);
    }
  }
  return w;
}

std::vector<int64_t> ShapeOf(const std::string& name) {
  auto ends = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  if (ends("embed_tokens.weight") || ends("lm_head.weight")) return {256, 32};
  if (ends("norm.weight") || ends("layernorm.weight")) return {32};
  if (ends("q_proj.weight") || ends("o_proj.weight")) return {32, 32};
  if (ends("k_proj.weight") || ends("v_proj.weight")) return {16, 32};
  if (ends("q_proj.bias")) return {32};
  if (ends("k_proj.bias") || ends("v_proj.bias")) return {16};
  if (ends("gate_proj.weight") || ends("up_proj.weight")) return {48, 32};
  if (ends("down_proj.weight")) return {32, 48};
  ADD_FAILURE() << "no shape for " << name;
  return {};
}

class ModelLoadingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("moend_model_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes config + single-file checkpoint for `spec`; returns the folder.
  std::string WriteTiny(const TinySpec& spec, const std::string& sub = "m",
                        const std::function<void(std::map<std::string, RawTensor>&)>& edit = nullptr,
                        const std::function<void(json&)>& edit_header = nullptr) {
    const fs::path d = dir_ / sub;
    fs::create_directories(d);
    EXPECT_TRUE(WriteFileAtomic((d / "config.json").string(), TinyConfig(spec).dump()).ok());
    std::map<std::string, RawTensor> tensors;
    for (const auto& [name, values] : TinyWeights(spec, 7)) {
      tensors[name] = {spec.dtype, ShapeOf(name), EncodeAs(spec.dtype, values)};
    }
    if (edit) edit(tensors);
    WriteSafetensors((d / "model.safetensors").string(), tensors, edit_header);
    return d.string();
  }

  fs::path dir_;
};

std::vector<float> Logits(const std::string& dir) {
  auto m = Model::Load(dir);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return {};
  std::vector<int32_t> tokens = {3, 141, 59, 26, 53, 58, 97, 93, 23, 84, 62, 64, 33, 83, 27, 95};
  auto logits = (*m)->Forward(tokens);
  EXPECT_TRUE(logits.ok()) << logits.status();
  return logits.ok() ? *logits : std::vector<float>{};
}

void ExpectContains(const absl::Status& s, const std::string& needle) {
  EXPECT_NE(std::string(s.message()).find(needle), std::string::npos)
      << "message '" << s.message() << "' lacks '" << needle << "'";
}

TEST_F(ModelLoadingTest, F32F16AndBf16CheckpointsGiveTheSameLogits) {
  // The values are exactly representable in all three dtypes.
  std::vector<float> bf16 = Logits(WriteTiny({.dtype = "BF16"}, "bf16"));
  std::vector<float> f16 = Logits(WriteTiny({.dtype = "F16"}, "f16"));
  std::vector<float> f32 = Logits(WriteTiny({.dtype = "F32"}, "f32"));
  ASSERT_EQ(bf16.size(), 16u * 256u);
  EXPECT_EQ(bf16, f32);
  EXPECT_EQ(f16, f32);
}

TEST_F(ModelLoadingTest, ShardedCheckpointMatchesSingleFile) {
  const std::string single = WriteTiny({}, "single");
  // Split the same tensors over two shards with an index.
  const fs::path d = dir_ / "sharded";
  fs::create_directories(d);
  fs::copy_file(fs::path(single) / "config.json", d / "config.json");
  std::map<std::string, RawTensor> a, b;
  json weight_map;
  int i = 0;
  for (const auto& [name, values] : TinyWeights({}, 7)) {
    auto& shard = (i++ % 2) ? a : b;
    shard[name] = {"BF16", ShapeOf(name), EncodeAs("BF16", values)};
    weight_map[name] = (&shard == &a) ? "model-00001-of-00002.safetensors"
                                      : "model-00002-of-00002.safetensors";
  }
  WriteSafetensors((d / "model-00001-of-00002.safetensors").string(), a);
  WriteSafetensors((d / "model-00002-of-00002.safetensors").string(), b);
  ASSERT_TRUE(WriteFileAtomic((d / "model.safetensors.index.json").string(),
                              json{{"metadata", json::object()}, {"weight_map", weight_map}}.dump())
                  .ok());
  EXPECT_EQ(Logits(single), Logits(d.string()));
}

TEST_F(ModelLoadingTest, TiedEmbeddingsUseTheEmbeddingMatrix) {
  // Untied with lm_head == embed must equal tied without lm_head.
  const std::string tied = WriteTiny({.tied = true}, "tied");
  const std::string untied = WriteTiny({}, "untied", [](std::map<std::string, RawTensor>& t) {
    t["lm_head.weight"] = t["model.embed_tokens.weight"];
  });
  EXPECT_EQ(Logits(tied), Logits(untied));
}

TEST_F(ModelLoadingTest, Qwen2LoadsItsQkvBiasAndItChangesTheOutput) {
  const std::string qwen = WriteTiny({.model_type = "qwen2", .bias = true}, "qwen");
  const std::string zero_bias = WriteTiny(
      {.model_type = "qwen2", .bias = true}, "qwen0", [](std::map<std::string, RawTensor>& t) {
        for (auto& [name, raw] : t) {
          if (name.find("proj.bias") != std::string::npos) raw.bytes.assign(raw.bytes.size(), 0);
        }
      });
  const std::string llama = WriteTiny({}, "llama");
  std::vector<float> with_bias = Logits(qwen);
  EXPECT_NE(with_bias, Logits(llama));
  EXPECT_EQ(Logits(zero_bias), Logits(llama));  // same weights, zero bias: same function
}

TEST_F(ModelLoadingTest, MissingBiasForQwen2IsAnError) {
  const std::string dir = WriteTiny({.model_type = "qwen2", .bias = true}, "q",
                                    [](std::map<std::string, RawTensor>& t) {
                                      t.erase("model.layers.1.self_attn.k_proj.bias");
                                    });
  auto m = Model::Load(dir);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  ExpectContains(m.status(), "model.layers.1.self_attn.k_proj.bias");
}

TEST_F(ModelLoadingTest, TruncatedFileIsAnErrorNamingTheFile) {
  const std::string dir = WriteTiny({});
  const std::string path = dir + "/model.safetensors";
  const auto size = fs::file_size(path);
  fs::resize_file(path, size - 100);
  auto m = Model::Load(dir);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss);
  ExpectContains(m.status(), path);
  ExpectContains(m.status(), "overrun");
  fs::resize_file(path, 5);  // shorter than the header length itself
  m = Model::Load(dir);
  ASSERT_FALSE(m.ok());
  ExpectContains(m.status(), "truncated");
}

TEST_F(ModelLoadingTest, HeaderLengthBeyondFileIsAnError) {
  const std::string dir = WriteTiny({});
  const std::string path = dir + "/model.safetensors";
  std::string bytes = *ReadFile(path);
  uint64_t huge = 1ull << 40;
  std::memcpy(bytes.data(), &huge, 8);
  ASSERT_TRUE(WriteFileAtomic(path, bytes).ok());
  auto m = Model::Load(dir);
  ASSERT_FALSE(m.ok());
  ExpectContains(m.status(), "header length");
}

TEST_F(ModelLoadingTest, OverlappingTensorsAreAnError) {
  const std::string dir = WriteTiny({}, "m", nullptr, [](json& header) {
    // Point o_proj of layer 0 at q_proj's bytes (same size).
    header["model.layers.0.self_attn.o_proj.weight"]["data_offsets"] =
        header["model.layers.0.self_attn.q_proj.weight"]["data_offsets"];
  });
  auto m = Model::Load(dir);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss);
  ExpectContains(m.status(), "overlap");
  ExpectContains(m.status(), "model.layers.0.self_attn.q_proj.weight");
}

TEST_F(ModelLoadingTest, OffsetsThatDisagreeWithTheShapeAreAnError) {
  const std::string dir = WriteTiny({}, "m", nullptr, [](json& header) {
    header["model.norm.weight"]["shape"] = {33};
  });
  auto m = Model::Load(dir);
  ASSERT_FALSE(m.ok());
  ExpectContains(m.status(), "model.norm.weight");
  ExpectContains(m.status(), "shape x dtype");
}

TEST_F(ModelLoadingTest, UnsupportedDtypeIsAnError) {
  const std::string dir = WriteTiny({}, "m", [](std::map<std::string, RawTensor>& t) {
    t["model.norm.weight"] = {"I64", {32}, std::string(32 * 8, '\0')};
  });
  auto m = Model::Load(dir);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kUnimplemented);
  ExpectContains(m.status(), "model.norm.weight");
  ExpectContains(m.status(), "I64");
}

TEST_F(ModelLoadingTest, UnsupportedArchitectureIsAnError) {
  TinySpec spec;
  const std::string dir = WriteTiny(spec);
  json c = TinyConfig(spec);
  c["model_type"] = "gpt2";
  ASSERT_TRUE(WriteFileAtomic(dir + "/config.json", c.dump()).ok());
  auto m = Model::Load(dir);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kUnimplemented);
  ExpectContains(m.status(), "gpt2");
  ExpectContains(m.status(), "config.json");
  c["model_type"] = "llama";
  c["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  ASSERT_TRUE(WriteFileAtomic(dir + "/config.json", c.dump()).ok());
  EXPECT_EQ(Model::Load(dir).status().code(), absl::StatusCode::kUnimplemented);
}

TEST_F(ModelLoadingTest, MissingTensorIsAnErrorNamingIt) {
  const std::string dir = WriteTiny({}, "m", [](std::map<std::string, RawTensor>& t) {
    t.erase("model.layers.1.mlp.up_proj.weight");
  });
  auto m = Model::Load(dir);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  ExpectContains(m.status(), "model.layers.1.mlp.up_proj.weight");
}

TEST_F(ModelLoadingTest, ShapeMismatchWithConfigIsAnError) {
  TinySpec spec;
  const std::string dir = WriteTiny(spec);
  json c = TinyConfig(spec);
  c["intermediate_size"] = 64;  // checkpoint has 48
  ASSERT_TRUE(WriteFileAtomic(dir + "/config.json", c.dump()).ok());
  auto m = Model::Load(dir);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  ExpectContains(m.status(), "model.layers.0.mlp.gate_proj.weight");
  ExpectContains(m.status(), "[48, 32]");
  ExpectContains(m.status(), "[64, 32]");
}

TEST_F(ModelLoadingTest, BadConfigValuesAreErrors) {
  TinySpec spec;
  const std::string dir = WriteTiny(spec);
  for (auto [key, value] : std::vector<std::pair<std::string, json>>{
           {"num_key_value_heads", 3}, {"hidden_size", -1}, {"vocab_size", "many"}}) {
    json c = TinyConfig(spec);
    c[key] = value;
    ASSERT_TRUE(WriteFileAtomic(dir + "/config.json", c.dump()).ok());
    auto m = Model::Load(dir);
    ASSERT_FALSE(m.ok()) << key;
    ExpectContains(m.status(), key);
  }
  ASSERT_TRUE(WriteFileAtomic(dir + "/config.json", "{not json").ok());
  EXPECT_FALSE(Model::Load(dir).ok());
  fs::remove(dir + "/config.json");
  EXPECT_EQ(Model::Load(dir).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ModelLoadingTest, NonFiniteWeightsAreAnError) {
  const std::string dir = WriteTiny({.dtype = "F32"}, "m", [](std::map<std::string, RawTensor>& t) {
    float nan = std::nanf("");
    std::memcpy(t["model.norm.weight"].bytes.data() + 8, &nan, 4);
  });
  auto m = Model::Load(dir);
  ASSERT_FALSE(m.ok());
  ExpectContains(m.status(), "model.norm.weight");
  ExpectContains(m.status(), "non-finite value at element 2");
}

TEST_F(ModelLoadingTest, NonFiniteWeightsOfLargeTensorsNameTheFirstElement) {
  // 40000 x 32 embedding rows: above the 2^20 elements from which threads
  // share the conversion and the check. Infinities at 1000003 and 1200000:
  // the first is reported, whichever thread sees it.
  constexpr int64_t kVocab = 40000;
  const std::string dir = WriteTiny({.tied = true, .dtype = "BF16"}, "m", [](std::map<std::string, RawTensor>& t) {
    std::vector<float> values(kVocab * 32, 0.5f);
    values[1000003] = -std::numeric_limits<float>::infinity();
    values[1200000] = std::numeric_limits<float>::infinity();
    t["model.embed_tokens.weight"] = {"BF16", {kVocab, 32}, EncodeAs("BF16", values)};
  });
  json config = TinyConfig({.tied = true});
  config["vocab_size"] = kVocab;
  ASSERT_TRUE(WriteFileAtomic((fs::path(dir) / "config.json").string(), config.dump()).ok());
  auto m = Model::Load(dir);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss);
  ExpectContains(m.status(), "model.embed_tokens.weight holds a non-finite value at element 1000003");
}

TEST_F(ModelLoadingTest, MissingCheckpointIsNotFound) {
  TinySpec spec;
  const std::string dir = WriteTiny(spec);
  fs::remove(dir + "/model.safetensors");
  auto m = Model::Load(dir);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  ExpectContains(m.status(), "model.safetensors");
}

TEST(HalfTest, RoundTripsAndRoundsToNearestEven) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t half = static_cast<uint16_t>(h);
    const float f = HalfToFloat(half);
    if (std::isnan(f)) continue;
    EXPECT_EQ(FloatToHalf(f), half) << h;
  }
  EXPECT_EQ(FloatToHalf(1.0f + 1.0f / 2048), FloatToHalf(1.0f));           // tie -> even
  EXPECT_EQ(FloatToHalf(1.0f + 3.0f / 2048), FloatToHalf(1.0f + 4.0f / 2048));  // tie -> even
  EXPECT_EQ(HalfToFloat(FloatToHalf(1e6f)), INFINITY);
  EXPECT_EQ(HalfToFloat(FloatToHalf(6e-8f)), 5.9604644775390625e-8f);  // smallest subnormal
}

}  // namespace
}  // namespace moend

namespace moend {
namespace {

// An independent, naive double-precision forward of the tiny model (per token,
// no BLAS, no blocking): checks the bias, GQA grouping and RoPE of the real one.
std::vector<double> NaiveForward(const std::map<std::string, std::vector<float>>& w,
                                 const std::vector<int32_t>& tokens, bool bias) {
  const int n = static_cast<int>(tokens.size()), hid = 32, H = 4, Hkv = 2, D = 8, I = 48;
  auto at = [&](const std::string& name) -> const std::vector<float>& { return w.at(name); };
  auto linear = [](const std::vector<double>& x, const std::vector<float>& W, int out, int in) {
    std::vector<double> y(out, 0.0);
    for (int o = 0; o < out; ++o)
      for (int i = 0; i < in; ++i) y[o] += W[o * in + i] * x[i];
    return y;
  };
  auto norm = [](const std::vector<double>& x, const std::vector<float>& g) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double r = 1.0 / std::sqrt(ss / x.size() + 1e-5);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = g[i] * x[i] * r;
    return y;
  };
  auto rope = [&](double* v, int pos) {
    for (int i = 0; i < D / 2; ++i) {
      const double f = pos / std::pow(10000.0, 2.0 * i / D);
      const double a = v[i], b = v[i + D / 2];
      v[i] = a * std::cos(f) - b * std::sin(f);
      v[i + D / 2] = b * std::cos(f) + a * std::sin(f);
    }
  };
  std::vector<std::vector<double>> x(n, std::vector<double>(hid));
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < hid; ++i) x[t][i] = at("model.embed_tokens.weight")[tokens[t] * hid + i];
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (int t = 0; t < n; ++t) {
      auto h = norm(x[t], at(p + "input_layernorm.weight"));
      q[t] = linear(h, at(p + "self_attn.q_proj.weight"), H * D, hid);
      k[t] = linear(h, at(p + "self_attn.k_proj.weight"), Hkv * D, hid);
      v[t] = linear(h, at(p + "self_attn.v_proj.weight"), Hkv * D, hid);
      if (bias) {
        for (int i = 0; i < H * D; ++i) q[t][i] += at(p + "self_attn.q_proj.bias")[i];
        for (int i = 0; i < Hkv * D; ++i) k[t][i] += at(p + "self_attn.k_proj.bias")[i];
        for (int i = 0; i < Hkv * D; ++i) v[t][i] += at(p + "self_attn.v_proj.bias")[i];
      }
      for (int hh = 0; hh < H; ++hh) rope(&q[t][hh * D], t);
      for (int hh = 0; hh < Hkv; ++hh) rope(&k[t][hh * D], t);
    }
    for (int t = 0; t < n; ++t) {
      std::vector<double> attn(H * D, 0.0);
      for (int hh = 0; hh < H; ++hh) {
        const int g = hh / (H / Hkv);
        std::vector<double> s(t + 1);
        double mx = -1e300, z = 0;
        for (int j = 0; j <= t; ++j) {
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += q[t][hh * D + d] * k[j][g * D + d];
          s[j] = dot / std::sqrt(double(D));
          mx = std::max(mx, s[j]);
        }
        for (int j = 0; j <= t; ++j) z += (s[j] = std::exp(s[j] - mx));
        for (int j = 0; j <= t; ++j)
          for (int d = 0; d < D; ++d) attn[hh * D + d] += s[j] / z * v[j][g * D + d];
      }
      auto o = linear(attn, at(p + "self_attn.o_proj.weight"), hid, H * D);
      for (int i = 0; i < hid; ++i) x[t][i] += o[i];
      auto h = norm(x[t], at(p + "post_attention_layernorm.weight"));
      auto gate = linear(h, at(p + "mlp.gate_proj.weight"), I, hid);
      auto up = linear(h, at(p + "mlp.up_proj.weight"), I, hid);
      for (int i = 0; i < I; ++i) gate[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
      auto down = linear(gate, at(p + "mlp.down_proj.weight"), hid, I);
      for (int i = 0; i < hid; ++i) x[t][i] += down[i];
    }
  }
  std::vector<double> logits;
  for (int t = 0; t < n; ++t) {
    auto h = norm(x[t], at("model.norm.weight"));
    auto row = linear(h, at("lm_head.weight"), 256, hid);
    logits.insert(logits.end(), row.begin(), row.end());
  }
  return logits;
}

TEST_F(ModelLoadingTest, ForwardMatchesNaiveReferenceWithBiasAndGqa) {
  const TinySpec spec{.model_type = "qwen2", .bias = true, .dtype = "F32"};
  const std::string dir = WriteTiny(spec);
  std::vector<int32_t> tokens;
  std::mt19937 rng(3);
  for (int i = 0; i < 150; ++i) tokens.push_back(static_cast<int32_t>(rng() % 256));  // > 2 blocks
  auto model = Model::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  auto got = (*model)->Forward(tokens);
  ASSERT_TRUE(got.ok()) << got.status();
  std::vector<double> want = NaiveForward(TinyWeights(spec, 7), tokens, /*bias=*/true);
  ASSERT_EQ(got->size(), want.size());
  double max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs((*got)[i] - want[i]));
    max_abs = std::max(max_abs, std::fabs(want[i]));
  }
  EXPECT_GT(max_abs, 0.5);
  EXPECT_LT(max_diff, 1e-4 * max_abs);
}

}  // namespace
}  // namespace moend

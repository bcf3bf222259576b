// moendctl logits / predict: the CPU forward pass of a model on a token or byte file.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/flags.h"
#include "clients/moendctl/commands.h"
#include "clients/moendctl/output.h"
#include "core/file_util.h"
#include "runtime/model.h"
#include "runtime/token_file.h"

namespace moend::ctl {
namespace {


// Token ids of a file: one token per byte (the shipped model is byte-level).
absl::StatusOr<std::vector<int32_t>> ReadByteTokens(const std::string& path, int64_t offset,
                                                    int64_t limit) {
  absl::StatusOr<std::string> bytes = ReadFile(path);
  if (!bytes.ok()) return bytes.status();
  if (bytes->empty()) return absl::InvalidArgumentError(absl::StrCat(path, " is empty"));
  if (offset < 0 || offset >= static_cast<int64_t>(bytes->size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("--offset ", offset, " is outside ", path, " (", bytes->size(), " bytes)"));
  }
  const int64_t end = limit > 0 ? std::min<int64_t>(bytes->size(), offset + limit)
                                : static_cast<int64_t>(bytes->size());
  std::vector<int32_t> tokens;
  for (int64_t i = offset; i < end; ++i) tokens.push_back(static_cast<unsigned char>((*bytes)[i]));
  return tokens;
}

std::string Printable(int32_t byte) {
  if (byte == '\n') return "\\n";
  if (byte == '\t') return "\\t";
  if (byte == ' ') return "' '";
  if (byte >= 33 && byte < 127) return std::string(1, static_cast<char>(byte));
  char buf[8];
  std::snprintf(buf, sizeof(buf), "\\x%02x", byte);
  return buf;
}

}  // namespace

int RunLogits(int argc, char** argv) {
  auto Fail = [](const absl::Status& s) { return FailWith("logits", s); };
  auto args = Args::Parse(argc, argv, {"model", "input", "out", "threads"}, {});
  if (!args.ok()) return Fail(args.status());
  if (args->help()) {
    std::printf(
        "usage: moendctl logits --model DIR --input FILE --out FILE [--threads N]\n"
        "Runs the forward pass over every token of FILE (one token per byte, or token\n"
        "ids in moend's token-id format: the 8 bytes 0x93 'MOETOK' 0x01, then uint32\n"
        "little-endian ids) and writes float32 little-endian logits [n, vocab] to --out.\n");
    return kExitOk;
  }
  auto model_dir = args->Required("model");
  auto input = args->Required("input");
  auto out = args->Required("out");
  auto threads = args->Int("threads", 0);
  for (const absl::Status& s : {model_dir.status(), input.status(), out.status(), threads.status()}) {
    if (!s.ok()) return Fail(s);
  }
  auto model = Model::Load(*model_dir, ModelOptions{static_cast<int>(*threads)});
  if (!model.ok()) return Fail(model.status());
  auto tokens = ReadTokenFile(*input);
  if (!tokens.ok()) return Fail(tokens.status());
  if (tokens->empty()) return Fail(absl::InvalidArgumentError(absl::StrCat(*input, " holds no tokens")));
  auto logits = (*model)->Forward(*tokens);
  if (!logits.ok()) return Fail(logits.status());
  absl::Status written = WriteFileAtomic(
      *out, std::string_view(reinterpret_cast<const char*>(logits->data()), logits->size() * 4));
  if (!written.ok()) return Fail(written);
  std::fprintf(stderr, "wrote logits [%zu, %lld] to %s\n", tokens->size(),
               static_cast<long long>((*model)->config().vocab_size), out->c_str());
  return kExitOk;
}

int RunPredict(int argc, char** argv) {
  auto Fail = [](const absl::Status& s) { return FailWith("predict", s); };
  auto args = Args::Parse(argc, argv, {"model", "input", "tokens", "offset", "threads", "show"},
                          {"json"});
  if (!args.ok()) return Fail(args.status());
  if (args->help()) {
    std::printf(
        "usage: moendctl predict --model DIR --input FILE [--tokens N=512] [--offset B=0]\n"
        "                        [--threads N] [--show K=8] [--json]\n"
        "Runs the forward pass over N bytes of FILE and prints, for the last K positions,\n"
        "the actual next byte and the model's top predictions, then accuracy, bits per\n"
        "byte and speed (--json: only the summary, as JSON).\n");
    return kExitOk;
  }
  auto model_dir = args->Required("model");
  auto input = args->Required("input");
  auto count = args->Int("tokens", 512);
  auto offset = args->Int("offset", 0);
  auto threads = args->Int("threads", 0);
  auto show = args->Int("show", 8);
  for (const absl::Status& s : {model_dir.status(), input.status(), count.status(),
                                offset.status(), threads.status(), show.status()}) {
    if (!s.ok()) return Fail(s);
  }
  if (*count < 2) return Fail(absl::InvalidArgumentError("--tokens must be at least 2"));
  const auto load_start = std::chrono::steady_clock::now();
  auto model = Model::Load(*model_dir, ModelOptions{static_cast<int>(*threads)});
  if (!model.ok()) return Fail(model.status());
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  auto tokens = ReadByteTokens(*input, *offset, *count);
  if (!tokens.ok()) return Fail(tokens.status());
  const auto start = std::chrono::steady_clock::now();
  auto logits = (*model)->Forward(*tokens);
  if (!logits.ok()) return Fail(logits.status());
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const int64_t vocab = (*model)->config().vocab_size;
  const int64_t n = static_cast<int64_t>(tokens->size());
  int64_t correct = 0;
  double nll_bits = 0;
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  const bool json = args->Has("json");
  if (!json) std::printf("model %s: %lld layers, hidden %lld, %lld/%lld heads (loaded in %.2f s)\n",
              (*model)->name().c_str(), static_cast<long long>((*model)->config().num_layers),
              static_cast<long long>((*model)->config().hidden_size),
              static_cast<long long>((*model)->config().num_heads),
              static_cast<long long>((*model)->config().num_kv_heads), load_s);
  if (!json) std::printf("%8s  %-6s  %s\n", "position", "actual", "top-3 predicted (probability)");
  for (int64_t t = 0; t + 1 < n; ++t) {
    const float* row = logits->data() + t * vocab;
    const float mx = *std::max_element(row, row + vocab);
    double z = 0;
    for (int64_t i = 0; i < vocab; ++i) z += std::exp(static_cast<double>(row[i] - mx));
    const int32_t next = (*tokens)[static_cast<size_t>(t + 1)];
    nll_bits += -(static_cast<double>(row[next] - mx) - std::log(z)) / std::log(2.0);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 3, order.end(),
                      [&](int32_t a, int32_t b) { return row[a] > row[b]; });
    if (order[0] == next) ++correct;
    if (!json && t + 1 >= n - *show) {
      std::printf("%8lld  %-6s ", static_cast<long long>(t + 1), Printable(next).c_str());
      for (int i = 0; i < 3; ++i) {
        std::printf(" %s (%.2f)", Printable(order[static_cast<size_t>(i)]).c_str(),
                    std::exp(static_cast<double>(row[order[static_cast<size_t>(i)]] - mx)) / z);
      }
      std::printf("\n");
    }
  }
  if (json) {
    std::printf("{\"model\": \"%s\", \"tokens\": %lld, \"top1_accuracy\": %.6f, "
                "\"bits_per_byte\": %.6f, \"prefill_seconds\": %.6f, \"tokens_per_second\": %.1f}\n",
                (*model)->name().c_str(), static_cast<long long>(n),
                static_cast<double>(correct) / static_cast<double>(n - 1),
                nll_bits / static_cast<double>(n - 1), secs, static_cast<double>(n) / secs);
    return kExitOk;
  }
  std::printf("next-byte top-1 accuracy %.1f%% over %lld positions, %.3f bits per byte\n",
              100.0 * static_cast<double>(correct) / static_cast<double>(n - 1),
              static_cast<long long>(n - 1), nll_bits / static_cast<double>(n - 1));
  std::printf("prefill of %lld tokens: %.3f s, %.0f tokens/s\n", static_cast<long long>(n), secs,
              static_cast<double>(n) / secs);
  return kExitOk;
}

}  // namespace moend::ctl

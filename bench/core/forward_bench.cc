// CPU prefill benchmark of moend's forward pass. Prints one JSON line per
// length with the median time; bench/core/run_forward_bench.sh runs it side by
// side with the PyTorch peer.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/file_util.h"
#include "runtime/model.h"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: forward_bench MODEL_DIR INPUT LENGTHS(e.g. 512,4096) THREADS REPEATS\n");
    return 2;
  }
  int threads = 0, repeats = 0;
  if (!absl::SimpleAtoi(argv[4], &threads) || !absl::SimpleAtoi(argv[5], &repeats) ||
      threads < 1 || repeats < 1) {
    std::fprintf(stderr, "THREADS and REPEATS must be positive integers\n");
    return 2;
  }
  auto model = moend::Model::Load(argv[1], moend::ModelOptions{threads});
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  auto data = moend::ReadFile(argv[2]);
  if (!data.ok()) {
    std::fprintf(stderr, "%s\n", std::string(data.status().message()).c_str());
    return 1;
  }
  for (absl::string_view len_text : absl::StrSplit(argv[3], ',')) {
    size_t n = 0;
    if (!absl::SimpleAtoi(len_text, &n) || n == 0 || n > data->size()) {
      std::fprintf(stderr, "bad length %s\n", std::string(len_text).c_str());
      return 2;
    }
    std::vector<int32_t> tokens(n);
    for (size_t i = 0; i < n; ++i) tokens[i] = static_cast<unsigned char>((*data)[i]);
    if (!(*model)->Forward(tokens).ok()) return 1;  // warm-up
    std::vector<double> times;
    for (int r = 0; r < repeats; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      auto logits = (*model)->Forward(tokens);
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      if (!logits.ok()) return 1;
    }
    std::sort(times.begin(), times.end());
    std::printf("{\"impl\": \"moend\", \"tokens\": %zu, \"threads\": %d, \"median_s\": %.6f}\n", n,
                threads, times[times.size() / 2]);
    std::fflush(stdout);
  }
  return 0;
}

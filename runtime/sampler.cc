#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"

namespace moend::runtime {

absl::Status ValidateSampling(const SamplingParams& p) {
  if (!(p.temperature >= 0 && p.temperature <= 100)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature ", p.temperature, " is outside [0, 100] (0 = greedy)"));
  }
  if (p.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k ", p.top_k, " is negative (0 = off)"));
  }
  if (!(p.top_p > 0 && p.top_p <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p ", p.top_p, " is outside (0, 1]"));
  }
  return absl::OkStatus();
}

int32_t Argmax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

int32_t Sampler::Next(std::span<const float> logits) {
  if (params_.temperature == 0) return Argmax(logits);
  const int64_t n = static_cast<int64_t>(logits.size());
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  // Most likely first; ties to the lower id, so the order is deterministic.
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  int64_t keep = params_.top_k > 0 ? std::min(params_.top_k, n) : n;
  std::vector<double> p(static_cast<size_t>(keep));
  const double mx = logits[order[0]];
  double z = 0;
  for (int64_t i = 0; i < keep; ++i) {
    p[i] = std::exp((logits[order[i]] - mx) / params_.temperature);
    z += p[i];
  }
  if (params_.top_p < 1) {
    double mass = 0;
    for (int64_t i = 0; i < keep; ++i) {
      mass += p[i] / z;
      if (mass >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += p[i];
  double u = std::uniform_real_distribution<double>(0.0, total)(rng_);
  for (int64_t i = 0; i < keep; ++i) {
    u -= p[i];
    if (u < 0) return order[i];
  }
  return order[keep - 1];
}

}  // namespace moend::runtime

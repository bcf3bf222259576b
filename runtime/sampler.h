// Next-token sampling: greedy, or temperature with top-k and top-p (nucleus)
// filtering, from a seeded generator (the same seed gives the same tokens).
#ifndef MOEND_RUNTIME_SAMPLER_H_
#define MOEND_RUNTIME_SAMPLER_H_

#include <cstdint>
#include <random>
#include <span>

#include "absl/status/status.h"

namespace moend::runtime {

struct SamplingParams {
  double temperature = 0;  // 0: greedy (argmax, ties to the lower id); else in (0, 100]
  int64_t top_k = 0;       // keep the k most likely tokens; 0: all
  double top_p = 1.0;      // keep the smallest set whose probability reaches p, in (0, 1]
  uint64_t seed = 0;       // generator seed
};

// InvalidArgument naming the field and its allowed range.
absl::Status ValidateSampling(const SamplingParams& p);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p) : params_(p), rng_(p.seed) {}
  int32_t Next(std::span<const float> logits);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

int32_t Argmax(std::span<const float> logits);

}  // namespace moend::runtime

#endif  // MOEND_RUNTIME_SAMPLER_H_

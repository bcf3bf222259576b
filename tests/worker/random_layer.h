// Random layer activations for the calibrator tests: q/k/v ~ N(0, 1), with a
// few heavy-hitter keys (every 17th token scaled by 2.5) so eviction has
// something to find.
#ifndef MOEND_TESTS_WORKER_RANDOM_LAYER_H_
#define MOEND_TESTS_WORKER_RANDOM_LAYER_H_

#include <cstdint>
#include <random>
#include <vector>

#include "kernels/kv_compress.h"

namespace moend::worker::testing {

struct RandomLayer {
  std::vector<float> q, k, v;
  kernels::LayerTensors x;
  RandomLayer(int64_t heads, int64_t kv_heads, int64_t n, int64_t d, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    q.resize(heads * n * d);
    k.resize(kv_heads * n * d);
    v.resize(kv_heads * n * d);
    for (float& f : q) f = dist(rng);
    for (float& f : k) f = dist(rng);
    for (float& f : v) f = dist(rng);
    for (int64_t h = 0; h < kv_heads; ++h)
      for (int64_t t = 0; t < n; t += 17)
        for (int64_t i = 0; i < d; ++i) k[(h * n + t) * d + i] *= 2.5f;
    x = kernels::LayerTensors{q.data(), k.data(), v.data(), heads, kv_heads, n, d};
  }
};

}  // namespace moend::worker::testing

#endif  // MOEND_TESTS_WORKER_RANDOM_LAYER_H_

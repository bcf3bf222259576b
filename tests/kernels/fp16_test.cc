#include <cmath>
#include <cstring>
#include <random>

#include "gtest/gtest.h"
#include "kernels/fp16.h"

namespace moend::kernels {
namespace {

uint16_t CompilerHalfBits(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}

TEST(Fp16Test, EveryHalfRoundTrips) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const uint16_t h = static_cast<uint16_t>(b);
    _Float16 ch;
    std::memcpy(&ch, &h, 2);
    const float f = HalfToFloat(h);
    if (std::isnan(static_cast<float>(ch))) {
      EXPECT_TRUE(std::isnan(f));
      continue;
    }
    EXPECT_EQ(f, static_cast<float>(ch)) << "bits " << b;
    EXPECT_EQ(FloatToHalf(f), h) << "bits " << b;
  }
}

TEST(Fp16Test, RoundsToNearestEvenLikeTheCompiler) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 2000000; ++i) {
    uint32_t x = bits(rng);
    // Concentrate on the half range (exponents 100..145) including subnormals and ties.
    x = (x & 0x807fffffu) | ((100u + (x >> 23) % 46u) << 23);
    if (i % 4 == 0) x &= ~0x00000fffu;  // exact ties and near-ties
    float f;
    std::memcpy(&f, &x, 4);
    ASSERT_EQ(FloatToHalf(f), CompilerHalfBits(f)) << "float bits " << std::hex << x;
  }
  for (float f : {0.0f, -0.0f, 65504.0f, 65519.0f, 65520.0f, 1e6f, -1e6f, 5.96e-8f, 2.98e-8f, 2.99e-8f,
                  6.1035e-5f, INFINITY, -INFINITY}) {
    EXPECT_EQ(FloatToHalf(f), CompilerHalfBits(f)) << f;
  }
}

}  // namespace
}  // namespace moend::kernels

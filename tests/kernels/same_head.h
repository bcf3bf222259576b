// ExpectSameHead: two compressed heads hold the same bytes, buffer by buffer
// (the failure names the buffer). Shared by the kernel and runtime tests.
#ifndef MOEND_TESTS_KERNELS_SAME_HEAD_H_
#define MOEND_TESTS_KERNELS_SAME_HEAD_H_

#include <gtest/gtest.h>

#include <string>

#include "kernels/compressed_cache.h"

namespace moend::testing {

inline void ExpectSameHead(const kernels::CompressedHead& a, const kernels::CompressedHead& b,
                           const std::string& what) {
  EXPECT_EQ(a.initial_kept, b.initial_kept) << what;
  EXPECT_EQ(a.quantized, b.quantized) << what;
  EXPECT_EQ(a.position, b.position) << what;
  EXPECT_EQ(a.k_codes, b.k_codes) << what;
  EXPECT_EQ(a.k_scale, b.k_scale) << what;
  EXPECT_EQ(a.k_min, b.k_min) << what;
  EXPECT_EQ(a.v_codes, b.v_codes) << what;
  EXPECT_EQ(a.v_scale, b.v_scale) << what;
  EXPECT_EQ(a.v_min, b.v_min) << what;
  EXPECT_EQ(a.window_k, b.window_k) << what;
  EXPECT_EQ(a.window_v, b.window_v) << what;
  EXPECT_EQ(a.residual_k, b.residual_k) << what;
  EXPECT_EQ(a.residual_v, b.residual_v) << what;
}

}  // namespace moend::testing

#endif  // MOEND_TESTS_KERNELS_SAME_HEAD_H_

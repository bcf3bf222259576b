// An independent brute-force implementation of DESIGN.md section 2 for the
// kernel tests: plain loops in double precision over dense matrices, no
// packing, no grouping tricks. fp16 rounding uses the compiler's _Float16.
#ifndef MOEND_TESTS_KERNELS_BRUTE_FORCE_H_
#define MOEND_TESTS_KERNELS_BRUTE_FORCE_H_

#include <cstdint>
#include <random>
#include <vector>

namespace moend::kernels::testing {

inline float F16(float x) { return static_cast<float>(static_cast<_Float16>(x)); }

// Random activations of one layer: q [hq, n, d], k/v [hkv, n, d].
struct Activations {
  int64_t hq = 0, hkv = 0, n = 0, d = 0;
  std::vector<float> q, k, v;
};
Activations RandomActivations(int64_t hq, int64_t hkv, int64_t n, int64_t d, uint32_t seed,
                              float spread = 1.0f);
// n decode queries, normal with standard deviation 2.
std::vector<float> RandomQueries(int64_t n, uint32_t seed);

// Pooled SnapKV scores [hkv][c-32] in double.
std::vector<std::vector<double>> BruteScores(const Activations& x, int64_t c);
// Top m per head by (score desc, index asc), ascending.
std::vector<std::vector<int32_t>> BruteSelect(const std::vector<std::vector<double>>& s, int64_t m);
std::vector<std::vector<int32_t>> BruteSelectF(const std::vector<float>& s, int64_t heads, int64_t cand,
                                               int64_t m);

// Min-max quantize-dequantize of values xs with `bits` (16: fp16 rounding).
std::vector<float> BruteFakeQuant(const std::vector<float>& xs, int bits);

// The K/V rows one head's attention sees, dequantized: kept tokens quantized
// (K per channel over groups of 32 kept rows, V per row over 32 channels),
// then the fp16 window. rows: [count][d].
struct EffectiveHead {
  std::vector<std::vector<float>> k, v;
};
// kept: positions of the quantized part in order; groups of 32 start at
// group_starts (K grouping); window: fp16 rows appended unquantized.
EffectiveHead BruteCompressHead(const float* k, const float* v, int64_t d,
                                const std::vector<int32_t>& kept, int kbits, int vbits,
                                const std::vector<int32_t>& window);

// Softmax attention of one query over rows, double precision.
std::vector<double> BruteAttend(const float* q, const std::vector<std::vector<float>>& k,
                                const std::vector<std::vector<float>>& v);

// Relative error sum||a-b||^2 / sum||b||^2.
double RelSqError(const std::vector<float>& a, const std::vector<float>& b);
double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b);
double MaxAbs(const std::vector<float>& a);

}  // namespace moend::kernels::testing

#endif  // MOEND_TESTS_KERNELS_BRUTE_FORCE_H_

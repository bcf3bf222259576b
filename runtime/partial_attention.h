// Softmax attention in mergeable pieces (the "online softmax" split): a set of
// query rows attends to one block of keys at a time, keeping for each row the
// max logit, the sum of exp(logit - max) and the unnormalized output; blocks
// are merged exactly afterwards. Dense float32 on the CPU via Gemm.
#ifndef MOEND_RUNTIME_PARTIAL_ATTENTION_H_
#define MOEND_RUNTIME_PARTIAL_ATTENTION_H_

#include <cstdint>
#include <vector>

namespace moend {

// For P query rows: max[i], sum[i] and o[i, :] = sum_j exp(s_ij - max_i) v_j.
struct SoftmaxPartial {
  std::vector<float> max, sum;  // [P]; max = -inf for a block with no keys
  std::vector<float> o;         // [P, D]
};

// scores[P, rows] = exp(scale * q k^T - rowmax) with scale 1/sqrt(D); fills
// part.max and part.sum (not part.o). q: [P, D]; k: [rows, D]. When
// causal_offset >= 0, row i sees keys [0, causal_offset + i] only (the others
// get 0); when < 0 every key.
void ExpScores(const float* q, int64_t p, const float* k, int64_t rows, int64_t d,
               int64_t causal_offset, std::vector<float>& scores, SoftmaxPartial& part);

// ExpScores, then part.o = scores v. v: [rows, D].
void AttendPartial(const float* q, int64_t p, const float* k, const float* v, int64_t rows,
                   int64_t d, int64_t causal_offset, std::vector<float>& scores,
                   SoftmaxPartial& part);

// out[i, :] (row stride out_stride floats) = the softmax attention output of
// row i over the union of the two blocks.
void MergePartials(const SoftmaxPartial& a, const SoftmaxPartial& b, int64_t p, int64_t d,
                   float* out, int64_t out_stride);

}  // namespace moend

#endif  // MOEND_RUNTIME_PARTIAL_ATTENTION_H_

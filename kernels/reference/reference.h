// Plain C++ reference implementation of the kernels' semantics. Inputs are
// validated by the public entry points (kv_compress.cc, attention.cc).
#ifndef MOEND_KERNELS_REFERENCE_REFERENCE_H_
#define MOEND_KERNELS_REFERENCE_REFERENCE_H_

#include "kernels/attention.h"
#include "kernels/kv_compress.h"

namespace moend::kernels::ref {

EvictionScores ComputeEvictionScores(const LayerTensors& x, int64_t prefix_tokens);
KeptSet SelectKept(const EvictionScores& scores, int64_t kept);
CompressedLayer QuantizeKept(const LayerTensors& x, const KeptSet& kept, int kbits, int vbits);

void DecodeAttention(absl::Span<const CompressedLayer* const> caches, const float* q,
                     int64_t num_heads, float* out);
void ProbeAttention(const CompressedLayer& prefix, const ProbeQueries& probes, float* out);

}  // namespace moend::kernels::ref

#endif  // MOEND_KERNELS_REFERENCE_REFERENCE_H_

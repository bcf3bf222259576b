#include "core/compression.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moend {

std::string ToString(const CompressionTuple& t) {
  return absl::StrFormat("(%g,%d,%d)", t.keep, t.kbits, t.vbits);
}

bool IsSupportedBits(int bits) { return bits == 2 || bits == 4 || bits == 8 || bits == 16; }

absl::Status ValidateTuple(const CompressionTuple& t) {
  if (!(t.keep > 0.0 && t.keep <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("keep ratio %g is outside (0, 1]", t.keep));
  }
  if (!IsSupportedBits(t.kbits)) {
    return absl::InvalidArgumentError(
        absl::StrCat("K bits ", t.kbits, " is not one of 2, 4, 8, 16"));
  }
  if (!IsSupportedBits(t.vbits)) {
    return absl::InvalidArgumentError(
        absl::StrCat("V bits ", t.vbits, " is not one of 2, 4, 8, 16"));
  }
  return absl::OkStatus();
}

TupleGrid TupleGrid::Default() {
  return TupleGrid{{1.0, 0.75, 0.5, 0.375, 0.25, 0.125, 0.0625}, {16, 8, 4, 2}, {16, 8, 4, 2}};
}

absl::Status TupleGrid::Validate() const {
  if (keeps.empty() || kbits.empty() || vbits.empty()) {
    return absl::InvalidArgumentError("tuple grid needs at least one keep, K bits and V bits value");
  }
  for (double k : keeps) {
    if (!(k > 0.0 && k <= 1.0)) {
      return absl::InvalidArgumentError(absl::StrFormat("grid keep %g is outside (0, 1]", k));
    }
  }
  for (const std::vector<int>* bits : {&kbits, &vbits}) {
    for (int b : *bits) {
      if (!IsSupportedBits(b)) {
        return absl::InvalidArgumentError(
            absl::StrCat("grid bits ", b, " is not one of 2, 4, 8, 16"));
      }
    }
  }
  return absl::OkStatus();
}

std::vector<CompressionTuple> TupleGrid::Tuples() const {
  std::vector<CompressionTuple> out;
  out.reserve(size());
  for (double k : keeps) {
    for (int kb : kbits) {
      for (int vb : vbits) out.push_back({k, kb, vb});
    }
  }
  return out;
}

int64_t WindowTokens(int64_t prefix_tokens) {
  return std::clamp<int64_t>(prefix_tokens, 0, kWindowTokens);
}

int64_t CandidateTokens(int64_t prefix_tokens) {
  return std::max<int64_t>(0, prefix_tokens - kWindowTokens);
}

int64_t KeptTokens(double keep, int64_t prefix_tokens) {
  const int64_t candidates = CandidateTokens(prefix_tokens);
  const int64_t m = std::llround(keep * static_cast<double>(candidates));
  return std::clamp<int64_t>(m, 0, candidates);
}

namespace {
int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

int64_t PackedKeyBytes(int64_t kept, int64_t head_dim, int kbits) {
  const int64_t codes = kept * head_dim * kbits / 8;
  // fp16 scale + fp16 min per channel per group of 32 tokens.
  const int64_t params = kbits < kFp16Bits ? CeilDiv(kept, kQuantGroup) * head_dim * 4 : 0;
  return codes + params;
}

int64_t PackedValueBytes(int64_t kept, int64_t head_dim, int vbits) {
  const int64_t codes = kept * head_dim * vbits / 8;
  // fp16 scale + fp16 min per token per group of 32 channels.
  const int64_t params = vbits < kFp16Bits ? kept * CeilDiv(head_dim, kQuantGroup) * 4 : 0;
  return codes + params;
}

int64_t LayerBytes(const KvShape& shape, const CompressionTuple& t, int64_t prefix_tokens) {
  const int64_t m = KeptTokens(t.keep, prefix_tokens);
  const int64_t window = WindowTokens(prefix_tokens) * shape.head_dim * 2 * 2;
  return shape.num_kv_heads * (PackedKeyBytes(m, shape.head_dim, t.kbits) +
                               PackedValueBytes(m, shape.head_dim, t.vbits) + window);
}

int64_t FullLayerBytes(const KvShape& shape, int64_t prefix_tokens) {
  return shape.num_kv_heads * prefix_tokens * shape.head_dim * 4;
}

}  // namespace moend

// The compression tuple grid and the byte accounting of DESIGN.md section 2.
// Pure logic shared by kernels/, worker/, the router and the clients.
#ifndef MOEND_CORE_COMPRESSION_H_
#define MOEND_CORE_COMPRESSION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace moend {

// The last kWindowTokens prefix tokens are always kept and never quantized.
inline constexpr int64_t kWindowTokens = 32;
// Quantization group: K per channel over 32 kept tokens, V per token over 32 channels.
inline constexpr int64_t kQuantGroup = 32;
// Bits value meaning "unquantized fp16".
inline constexpr int kFp16Bits = 16;

// One compression "expert" for a layer.
struct CompressionTuple {
  double keep = 1.0;  // fraction of eviction candidates kept, in (0, 1]
  int kbits = 16;     // key bits: 2, 4, 8 or 16 (fp16)
  int vbits = 16;     // value bits: 2, 4, 8 or 16 (fp16)

  friend bool operator==(const CompressionTuple&, const CompressionTuple&) = default;
};

std::string ToString(const CompressionTuple& t);  // "(0.5,4,2)"

// True for the bit widths the packed formats support: 2, 4, 8, 16.
bool IsSupportedBits(int bits);

// OK iff keep is in (0, 1] and both bit widths are supported; otherwise an
// InvalidArgument naming the bad field and the allowed values.
absl::Status ValidateTuple(const CompressionTuple& t);

// The tuple grid is configuration: keeps x kbits x vbits, in that nesting order
// (keep outermost, vbits innermost).
struct TupleGrid {
  std::vector<double> keeps;
  std::vector<int> kbits;
  std::vector<int> vbits;

  // DESIGN.md: keep {1, .75, .5, .375, .25, .125, .0625}, bits {16, 8, 4, 2}.
  static TupleGrid Default();
  absl::Status Validate() const;
  std::vector<CompressionTuple> Tuples() const;
  size_t size() const { return keeps.size() * kbits.size() * vbits.size(); }
};

// Shape of one layer's KV cache.
struct KvShape {
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // multiple of 8
};

// Window tokens kept at compression point c: min(c, 32).
int64_t WindowTokens(int64_t prefix_tokens);
// Eviction candidates at compression point c: max(0, c - 32).
int64_t CandidateTokens(int64_t prefix_tokens);
// Tokens kept per KV head out of the candidates: round(keep * (c - 32)),
// halves rounded away from zero.
int64_t KeptTokens(double keep, int64_t prefix_tokens);

// Bytes per KV head of the packed K part for m kept tokens.
int64_t PackedKeyBytes(int64_t kept, int64_t head_dim, int kbits);
// Bytes per KV head of the packed V part for m kept tokens.
int64_t PackedValueBytes(int64_t kept, int64_t head_dim, int vbits);

// Bytes the compressed cache of one layer occupies at compression point c:
// H_kv * (K + V + window), exactly as DESIGN.md section 2.
int64_t LayerBytes(const KvShape& shape, const CompressionTuple& t, int64_t prefix_tokens);
// Bytes of the uncompressed fp16 cache of one layer: H_kv * c * D * 4.
int64_t FullLayerBytes(const KvShape& shape, int64_t prefix_tokens);

}  // namespace moend

#endif  // MOEND_CORE_COMPRESSION_H_

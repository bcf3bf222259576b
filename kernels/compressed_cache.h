// The compressed KV cache of one layer of one sequence (DESIGN.md section 2).
//
// Per KV head, in attention order (order does not matter to attention: K is
// post-RoPE, so no positions are needed):
//   quantized part  the m0 tokens kept by eviction at compression point c, then
//                   every full group of 32 flushed from the residual. bits < 16:
//                   codes packed densely, row-major per token, code of channel d
//                   at bit bits*d of the token's row (little endian); K has an
//                   fp16 scale and min per channel per group of 32 tokens, V an
//                   fp16 scale and min per token per group of 32 channels.
//                   bits == 16: the rows as fp16.
//   window          the last min(c, 32) prefix tokens, fp16, never quantized.
//   residual        tokens appended after compression, fp16, until 32 of them
//                   form a group that is flushed into the quantized part.
// Each head is packed with its own bits (LayerFormat::KBits(h), VBits(h)) and
// holds its own number of kept tokens.
// Bytes() counts exactly the buffers above; right after compression it equals
// core's LayerBytes() for a uniform layer, and the sum over heads of
// PackedKeyBytes + PackedValueBytes + window with each head's tuple for a
// mixed one. Token positions are kept as bookkeeping and not billed.
#ifndef MOEND_KERNELS_COMPRESSED_CACHE_H_
#define MOEND_KERNELS_COMPRESSED_CACHE_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cache_view.h"

namespace moend::kernels {

// Shape and bit widths of a compressed layer. Every KV head may have its own
// bit widths (per-head tuples, DESIGN.md section 2): head_kbits / head_vbits
// hold one entry per KV head, or are empty when every head uses kbits / vbits.
// `LayerFormat{hkv, d, kb, vb}` is a uniform layer.
struct LayerFormat {
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // 64 or 128
  int kbits = 16;        // 2, 4, 8 or 16 (fp16): the K bits of every head when head_kbits is empty
  int vbits = 16;        // the V bits of every head when head_vbits is empty
  std::vector<int> head_kbits;  // [num_kv_heads] or empty
  std::vector<int> head_vbits;  // [num_kv_heads] or empty

  LayerFormat() = default;
  LayerFormat(int64_t kv_heads, int64_t dim, int k_bits = 16, int v_bits = 16)
      : num_kv_heads(kv_heads), head_dim(dim), kbits(k_bits), vbits(v_bits) {}
  // A layer whose head h has bits (kbits[h], vbits[h]). When every head has
  // the same bits the result is the uniform format (empty per-head vectors);
  // otherwise kbits / vbits are set to head 0's and only KBits(h) / VBits(h)
  // carry meaning.
  static LayerFormat PerHead(int64_t dim, const std::vector<int>& kbits,
                             const std::vector<int>& vbits);

  int KBits(int64_t h) const { return head_kbits.empty() ? kbits : head_kbits[h]; }
  int VBits(int64_t h) const { return head_vbits.empty() ? vbits : head_vbits[h]; }
  // True when every head has the same K bits and the same V bits (then
  // KBits(h) == KBits(0) and VBits(h) == VBits(0) for every h).
  bool Uniform() const;

  // Equal shapes and equal bits head by head (a uniform layer equals the same
  // layer spelled with per-head vectors).
  friend bool operator==(const LayerFormat& a, const LayerFormat& b);
};

// "4/2" for a uniform layer, "[4/2 8/8 ...]" (K/V per head) otherwise.
std::string BitsString(const LayerFormat& f);

// Bytes a layer's cache takes once reserved for `appended` tokens after
// compression with `initial_kept[h]` kept tokens in head h (one entry per KV
// head, or one entry for all heads) and a window of `window` tokens per head:
// the Bytes() of section 2.9 at its largest (residual up to 32 rows) plus 4
// bytes of position per quantized token, summed over heads with each head's
// bits. Exactly CapacityBytes() after Reserve(appended).
int64_t ReservedLayerBytes(const LayerFormat& f, std::span<const int64_t> initial_kept,
                           int64_t window, int64_t appended);
// The same with `initial_kept` tokens kept in every head.
int64_t ReservedLayerBytes(const LayerFormat& f, int64_t initial_kept, int64_t window,
                           int64_t appended);

// OK iff head_dim is 64 or 128, num_kv_heads > 0, the per-head vectors are
// empty or hold num_kv_heads entries, and every head's bit widths are supported.
absl::Status ValidateFormat(const LayerFormat& f);

// Bytes of one packed K / V row (a token's D codes) at `bits` (16: fp16).
int64_t PackedRowBytes(int64_t head_dim, int bits);

struct CompressedHead {
  // kbits / vbits below are the head's own: LayerFormat::KBits(h) / VBits(h).
  std::vector<uint8_t> k_codes;      // [quantized, PackedRowBytes(D, kbits)]
  std::vector<uint16_t> k_scale;     // fp16 [key_groups, D]; empty when kbits == 16
  std::vector<uint16_t> k_min;       // fp16 [key_groups, D]
  std::vector<uint8_t> v_codes;      // [quantized, PackedRowBytes(D, vbits)]
  std::vector<uint16_t> v_scale;     // fp16 [quantized, D/32]; empty when vbits == 16
  std::vector<uint16_t> v_min;       // fp16 [quantized, D/32]
  std::vector<uint16_t> window_k;    // fp16 [window, D]
  std::vector<uint16_t> window_v;    // fp16 [window, D]
  std::vector<uint16_t> residual_k;  // fp16 [residual, D]
  std::vector<uint16_t> residual_v;  // fp16 [residual, D]
  std::vector<int32_t> position;     // [quantized] token positions (not billed)
  int64_t initial_kept = 0;  // m0: tokens kept at compression; K groups of 32 over them
  int64_t quantized = 0;     // m0 + flushed tokens

  // K groups: ceil(m0/32) over the kept tokens, then one per flushed group.
  int64_t KeyGroups() const;
  // First quantized token of K group g, and its size (<= 32).
  int64_t KeyGroupBegin(int64_t g) const;
  int64_t KeyGroupSize(int64_t g) const;
};

// One flush of a head's residual (DESIGN.md section 2): n <= 32 fp16 rows of
// K quantized as one group, and of V row by row, with (kbits, vbits). The
// host cache (CompressedLayer::Append) and the device one
// (kernels/cuda/resident.h) both flush through it.
struct QuantizedGroup {
  std::vector<uint8_t> k_codes;   // [n, PackedRowBytes(D, kbits)]
  std::vector<uint8_t> v_codes;   // [n, PackedRowBytes(D, vbits)]
  std::vector<uint16_t> k_scale;  // fp16 [D]; empty when kbits == 16
  std::vector<uint16_t> k_min;    // fp16 [D]
  std::vector<uint16_t> v_scale;  // fp16 [n, D/32]; empty when vbits == 16
  std::vector<uint16_t> v_min;    // fp16 [n, D/32]
};
QuantizedGroup QuantizeResidual(const uint16_t* residual_k, const uint16_t* residual_v, int64_t n,
                                int64_t head_dim, int kbits, int vbits);

class CompressedLayer {
 public:
  CompressedLayer() = default;
  // An empty layer (no kept tokens, empty window) at compression point
  // `prefix_tokens`; the compressors fill the heads.
  CompressedLayer(const LayerFormat& format, int64_t prefix_tokens);

  const LayerFormat& format() const { return format_; }
  int64_t prefix_tokens() const { return prefix_tokens_; }
  int64_t appended_tokens() const { return appended_; }
  int64_t window_tokens() const;
  int64_t residual_tokens() const;
  // Tokens attention sees in head h: quantized + window + residual.
  int64_t AttendedTokens(int64_t h) const;

  CompressedHead& head(int64_t h) { return heads_[h]; }
  const CompressedHead& head(int64_t h) const { return heads_[h]; }
  // A view of head h's buffers (valid until the layer is changed or destroyed).
  HeadView View(int64_t h) const;

  // Bytes the cache occupies: every code, scale, min, window and residual
  // element (positions excluded).
  int64_t Bytes() const;

  // Reserves every buffer for `appended` more tokens (groups flushed from the
  // residual included), so that appending them never reallocates: the cache
  // grows in place. Afterwards CapacityBytes() equals ReservedLayerBytes().
  void Reserve(int64_t appended);
  // Bytes of every buffer's allocated capacity, positions included: the
  // memory the cache really takes.
  int64_t CapacityBytes() const;

  // Appends `tokens` new tokens (decode steps or a chunk) to the residual;
  // each time the residual reaches 32 tokens they are quantized with the
  // bits of each head (K: one new group of 32; V: per token) and moved into the
  // quantized part. k, v: [num_kv_heads, tokens, D] float32, head stride
  // `head_stride` rows (0 means `tokens`).
  absl::Status Append(const float* k, const float* v, int64_t tokens, int64_t head_stride = 0);

 private:
  void FlushResidual();

  LayerFormat format_;
  int64_t prefix_tokens_ = 0;
  int64_t appended_ = 0;
  std::vector<CompressedHead> heads_;
};

}  // namespace moend::kernels

#endif  // MOEND_KERNELS_COMPRESSED_CACHE_H_

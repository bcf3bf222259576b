// One sequence decoded with a compressed KV cache (DESIGN.md section 3): the
// context is prefilled with full attention, every layer's cache is compressed
// with its plan tuple through kernels/, and later tokens attend to the
// compressed cache (appended tokens sit in the fp16 residual until a group of
// 32 is quantized with the layer's bits).
//
// The prefill (full attention, the same for every plan) is captured once in a
// PrefillCapture so that many plans can be applied to one context.
#ifndef MOEND_CLIENTS_INFERENCE_COMPRESSED_SEQUENCE_H_
#define MOEND_CLIENTS_INFERENCE_COMPRESSED_SEQUENCE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "core/compression.h"
#include "core/model.h"
#include "kernels/backend.h"
#include "kernels/compressed_cache.h"
#include "kernels/kv_compress.h"

namespace moend::inference {

// Every layer's q, k, v of a full-attention prefill, the eviction scores at
// c = n (they do not depend on the plan), and the logits of its last position.
struct PrefillCapture {
  int64_t tokens = 0;
  std::vector<std::vector<float>> q, k, v;  // per layer: [H, n, D], [Hkv, n, D], [Hkv, n, D]
  std::vector<kernels::EvictionScores> scores;  // per layer
  std::vector<float> last_logits;           // [vocab]
};

absl::StatusOr<PrefillCapture> Prefill(const Model& model, std::span<const int32_t> context,
                                       kernels::Backend backend = kernels::Backend::kAuto);

class CompressedSequence {
 public:
  // Compresses every layer of `prefill` at c = prefill.tokens with tuples[l]
  // (one per layer). `backend` runs the compression kernels.
  static absl::StatusOr<std::unique_ptr<CompressedSequence>> Create(
      const Model& model, const PrefillCapture& prefill, std::span<const CompressionTuple> tuples,
      kernels::Backend backend = kernels::Backend::kAuto);

  // Appends `tokens` and returns their next-token logits [n, vocab]. Each
  // token sees exactly the cache that one-at-a-time decoding (append, then
  // attend, as kernels::DecodeAttention) would give it; runs of tokens that
  // fill no group are processed as one causal chunk.
  absl::StatusOr<std::vector<float>> Feed(std::span<const int32_t> tokens);

  // Bytes the compressed caches occupy now (packed codes, scales, window,
  // residual), and what an fp16 cache of the same tokens would take.
  int64_t CacheBytes() const;
  int64_t UncompressedBytes() const;
  int64_t position() const { return position_; }

 private:
  CompressedSequence(const Model& model) : model_(model) {}
  void Redensify(int64_t layer);

  const Model& model_;
  int64_t position_ = 0;  // tokens seen so far (context + fed)
  std::vector<kernels::CompressedLayer> layers_;
  // Dequantized float copy of each layer's cache, [layer][kv head] rows
  // [AttendedTokens, D]: the compressed prefix and window, then the appended
  // tokens in order (flushed groups dequantized, the residual as fp16); kept
  // in step with layers_ for the CPU attention.
  std::vector<std::vector<std::vector<float>>> dense_k_, dense_v_;
};

}  // namespace moend::inference

#endif  // MOEND_CLIENTS_INFERENCE_COMPRESSED_SEQUENCE_H_

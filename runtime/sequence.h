// One sequence decoded over its compressed caches (docs/DESIGN.md section
// 5.1), and the batched forward step that advances many sequences at once.
//
// A step feeds each sequence a run of tokens (1 when decoding): one forward
// over all their rows, so the weights are read once per step for the whole
// batch. Per layer, each sequence's new K/V rows are appended to its cache
// (fp16 residual, flushed into a quantized group of 32 when it fills), then
// every row attends, through the CPU attention kernel, to the packed cache as
// it stands: the quantized part, the window and the residual rows up to
// itself. No dequantized copy of a cache exists.
//
// The token that fills a residual group attends to that group already
// quantized (one-at-a-time decoding appends before it attends), so a run must
// stop just before it, and that token goes alone: MaxRun() says how many
// tokens a sequence may take in its next step.
#ifndef MOEND_RUNTIME_SEQUENCE_H_
#define MOEND_RUNTIME_SEQUENCE_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cache_view.h"
#include "kernels/compressed_cache.h"
#include "kernels/cpu_attention.h"
#include "runtime/model.h"

namespace moend::runtime {

class Sequence {
 public:
  // Takes the caches of every layer compressed at c = position (one per model
  // layer, as StreamingPrefill returns them).
  Sequence(std::vector<kernels::CompressedLayer> layers, int64_t position)
      : layers_(std::move(layers)), position_(position) {}

  int64_t position() const { return position_; }
  // Tokens the next step may feed: 1 when the next token fills a residual
  // group, else up to the group's room minus one.
  int64_t MaxRun() const;
  // Bytes the caches hold now (codes, scales, window, residual: section 2.9).
  int64_t CacheBytes() const;
  // Bytes the caches' buffers take (capacity, positions included).
  int64_t CapacityBytes() const;
  // Bytes an fp16 cache of the same tokens would hold.
  int64_t UncompressedBytes(const ModelConfig& config) const;

  std::vector<kernels::CompressedLayer>& layers() { return layers_; }
  const std::vector<kernels::CompressedLayer>& layers() const { return layers_; }
  void Advance(int64_t tokens) { position_ += tokens; }

 private:
  std::vector<kernels::CompressedLayer> layers_;
  int64_t position_ = 0;
};

struct StepInput {
  Sequence* sequence = nullptr;
  std::span<const int32_t> tokens;  // 1..sequence->MaxRun() tokens
};

// One forward step over a batch. logits: [sum of runs, vocab], the
// next-token logits of every fed token, in input order. InvalidArgument for
// a token outside the vocabulary or a run longer than MaxRun() (nothing is
// changed then).
absl::Status Step(const Model& model, std::span<const StepInput> batch, std::vector<float>* logits,
                  kernels::CpuIsa isa = kernels::CpuIsa::kBest);

// Feeds `tokens` to one sequence in runs of at most MaxRun() and returns the
// next-token logits of each [tokens, vocab].
absl::StatusOr<std::vector<float>> Feed(const Model& model, Sequence& sequence,
                                        std::span<const int32_t> tokens,
                                        kernels::CpuIsa isa = kernels::CpuIsa::kBest);

}  // namespace moend::runtime

#endif  // MOEND_RUNTIME_SEQUENCE_H_

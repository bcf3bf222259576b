// Streaming prefill (docs/DESIGN.md section 5.1): the prompt runs through the
// model one layer at a time, and each layer is compressed, with the tuples of
// every plan asked for, as soon as its K/V and eviction scores exist; then its
// uncompressed K/V is dropped. At no time does the process hold more than one
// layer's uncompressed q/k/v beyond the residual stream [n, hidden]; the
// projections and the MLP run over row chunks, and attention over blocks of
// 64 queries, so their temporaries are bounded too.
//
// Several plans share one prefill (the forward and the scores do not depend
// on the plan): evaluation compares plans on one context, and a node's shadow
// full-cache sequence shares its request's prefill.
#ifndef MOEND_RUNTIME_STREAMING_PREFILL_H_
#define MOEND_RUNTIME_STREAMING_PREFILL_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "core/compression.h"
#include "kernels/backend.h"
#include "kernels/compressed_cache.h"
#include "runtime/model.h"

namespace moend::runtime {

struct PrefillOptions {
  // Tokens each sequence may append after compression (a question, generated
  // tokens); every cache reserves room for them, so appending never moves it.
  int64_t appended_capacity = 0;
  // Per plan instead (one entry per plan) when not empty.
  std::vector<int64_t> appended_per_plan;
  // Rows per chunk of the projections, the attention and the MLP (rounded up
  // to a multiple of 64).
  int64_t chunk_tokens = 256;
  kernels::Backend backend = kernels::Backend::kAuto;
};

struct PrefillResult {
  std::vector<float> last_logits;  // [vocab]: the next-token logits after the prompt
  // caches[p][l]: layer l compressed with plans[p]'s tuples of layer l (one
  // for all heads, or one per KV head) at c = prompt length.
  std::vector<std::vector<kernels::CompressedLayer>> caches;
};

// A plan is either per layer (num_layers tuples: layer l's heads all use
// plan[l]) or per head (num_layers * num_kv_heads tuples: KV head h of layer
// l uses plan[l * num_kv_heads + h]; DESIGN.md section 2 "Per-head tuples").
// Both kinds may be mixed in one call; every layer is compressed with
// kernels::CompressHeads, and a per-head plan whose heads of each layer are
// equal gives the caches of the per-layer plan. InvalidArgument for bad
// tokens, a plan of the wrong length or an invalid tuple (naming plan, layer
// and, in a per-head plan, head).
absl::StatusOr<PrefillResult> StreamingPrefill(
    const Model& model, std::span<const int32_t> tokens,
    std::span<const std::vector<CompressionTuple>> plans, const PrefillOptions& options = {});

// The same prefill run in bounded pieces, so that a caller can interleave it
// with other work (the node's engine runs a piece between two decode steps
// of the sequences already running: a long prompt then delays them by one
// piece's time, not the whole prompt's). A layer is four phases: q/k/v
// projections over row chunks, compression (the layer's K/V complete),
// attention over chunks of query rows, o_proj and MLP over row chunks. The
// result equals StreamingPrefill's whatever the pieces. It holds the
// residual stream and one layer's q/k/v, like StreamingPrefill, until the
// last layer has run; then only the caches and the logits.
class PrefillRun {
 public:
  // Validates as StreamingPrefill does; copies the plans and embeds the
  // tokens. The model must outlive the run.
  static absl::StatusOr<std::unique_ptr<PrefillRun>> Start(
      const Model& model, std::span<const int32_t> tokens,
      std::span<const std::vector<CompressionTuple>> plans, const PrefillOptions& options = {});

  // Runs work units (a row chunk of a phase, or a layer's compression,
  // counted as one chunk) until they add up to at least `rows` rows, or the
  // prefill is done; at least one unit. After the last layer, computes the
  // next-token logits. FailedPrecondition once done.
  absl::Status Advance(int64_t rows);
  // Runs the rest of the current layer.
  absl::Status NextLayer();
  bool done() const;
  int64_t layers_done() const { return layer_; }
  // After done(): the caches and the logits (moved out; call once).
  PrefillResult TakeResult();

 private:
  enum class Phase { kProject, kCompress, kAttend, kFinish };
  PrefillRun(const Model& model, std::span<const int32_t> tokens,
             std::span<const std::vector<CompressionTuple>> plans, const PrefillOptions& options);
  absl::Status Unit();

  const Model& model_;
  const std::vector<std::vector<CompressionTuple>> plans_;
  const PrefillOptions options_;
  int64_t n_ = 0, chunk_ = 0, layer_ = 0, row_ = 0;
  Phase phase_ = Phase::kProject;
  std::vector<float> x_, q_, k_, v_, attn_, cq_, ck_, cv_;
  PrefillResult result_;
};

// Checks that `plan` has one valid tuple per layer of `config`, or one per
// layer and KV head (the message names both allowed sizes, and the layer and
// head of a bad tuple).
absl::Status ValidatePlan(const ModelConfig& config, std::span<const CompressionTuple> plan);

// The tuple of KV head `head` of layer `layer` under a validated plan of
// either kind.
const CompressionTuple& HeadTuple(const ModelConfig& config, std::span<const CompressionTuple> plan,
                                  int64_t layer, int64_t head);

// Bytes the caches of one sequence reserve under `plan` for a prompt of
// `prompt_tokens` tokens and `appended` more: the sum of
// kernels::ReservedLayerBytes over layers, each head with its own tuple (what
// the node's KV pool admits). `plan` must be valid (ValidatePlan).
int64_t ReservedSequenceBytes(const ModelConfig& config, std::span<const CompressionTuple> plan,
                              int64_t prompt_tokens, int64_t appended);

}  // namespace moend::runtime

#endif  // MOEND_RUNTIME_STREAMING_PREFILL_H_

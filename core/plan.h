// A compression plan: one tuple per layer, chosen under a memory budget
// (DESIGN.md section 2), and the budget a client asks for. The plan is data:
// the router computes it once, nodes apply it many times.
#ifndef MOEND_CORE_PLAN_H_
#define MOEND_CORE_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/compression.h"

namespace moend {

// The memory budget of a plan, in one of two forms:
// - bytes at a context: the compressed cache of all layers at compression
//   point `context` must take at most `bytes` bytes;
// - a compression ratio R >= 1: budget bytes = floor(sum over layers of
//   FullLayerBytes at the context / R). R = 1 is the full cache. The context
//   defaults to the sensitivity table's compression_point when 0.
// Both count everything the cache holds (window, scales, mins), as
// LayerBytes does.
struct Budget {
  enum class Kind { kBytes, kRatio };

  Kind kind = Kind::kRatio;
  double ratio = 0;     // kRatio: compression ratio, finite and >= 1
  int64_t bytes = 0;    // kBytes: budget in bytes, > 0
  int64_t context = 0;  // tokens of the compressed prefix; kRatio: 0 = table's

  static Budget Ratio(double ratio, int64_t context = 0) {
    return Budget{Kind::kRatio, ratio, 0, context};
  }
  static Budget Bytes(int64_t bytes, int64_t context) {
    return Budget{Kind::kBytes, 0, bytes, context};
  }

  // InvalidArgument with a message naming the bad field: ratio NaN, infinite
  // or < 1; bytes <= 0; context < 0, or 0 with kBytes; context > kMaxContext.
  absl::Status Validate() const;

  // Contexts above this (2^30 tokens) are rejected, which keeps every byte
  // count of a validated table far inside int64.
  static constexpr int64_t kMaxContext = int64_t{1} << 30;
};

std::string ToString(const Budget& b);  // "ratio 14 at context 4096" / "123 bytes at context 4096"

// One KV head of a per-head plan layer.
struct PlanHead {
  CompressionTuple tuple;
  int64_t bytes = 0;             // the head's share: LayerBytes of one head
  double predicted_error = 0.0;  // the table's s_head(layer, head, tuple)

  friend bool operator==(const PlanHead&, const PlanHead&) = default;
};

// One layer of a plan: either one tuple for every KV head (heads empty), or
// one tuple per KV head (docs/DESIGN.md section 2.10); then `tuple` is unused
// and bytes and predicted_error are the sums over the heads.
struct PlanLayer {
  CompressionTuple tuple;
  int64_t bytes = 0;             // LayerBytes of the tuple at the plan's context
  double predicted_error = 0.0;  // the table's s(layer, tuple)
  std::vector<PlanHead> heads;   // empty, or one per KV head

  // The tuple KV head h uses.
  const CompressionTuple& HeadTuple(size_t h) const { return heads.empty() ? tuple : heads[h].tuple; }

  friend bool operator==(const PlanLayer&, const PlanLayer&) = default;
};

struct Plan {
  std::string model;
  std::string solver;         // the solver that made it ("greedy", "exact", ...)
  int64_t budget_bytes = 0;   // the budget asked for, in bytes at `context`
  int64_t context = 0;        // compression point the bytes are counted at
  int64_t total_bytes = 0;    // sum of layers[].bytes, <= budget_bytes
  double ratio = 0.0;         // full cache bytes at `context` / total_bytes
  double predicted_error = 0.0;  // sum of layers[].predicted_error
  std::vector<PlanLayer> layers;  // one per model layer, in order

  // Every layer's tuple (or every head's) is valid, bytes > 0, errors finite
  // and >= 0; per-head layers all have the same number of heads (>= 1) and
  // their bytes and errors are the sums over heads;
  // total_bytes equals the sum of layer bytes and fits budget_bytes;
  // predicted_error equals the sum of layer errors (relative 1e-9); ratio
  // finite and > 0; context > 0; solver non-empty; at least one layer.
  absl::Status Validate() const;

  // KV heads of the per-head layers; 0 when every layer is per layer.
  int64_t HeadsPerLayer() const;

  // The tuples a runtime applies (runtime/streaming_prefill.h): one per layer
  // when no layer is per head, otherwise one per (layer, KV head), layer-major,
  // per-layer layers repeated for each head.
  std::vector<CompressionTuple> RuntimeTuples() const;

  friend bool operator==(const Plan&, const Plan&) = default;
};

// JSON: {"model", "solver", "budget_bytes", "context", "total_bytes", "ratio",
// "predicted_error", "layers": [{"keep", "kbits", "vbits", "bytes",
// "predicted_error"}...]}; a per-head layer has instead of keep/kbits/vbits
// "heads": [{"keep", "kbits", "vbits", "bytes", "predicted_error"}...] (a
// reader that predates per-head plans rejects it for the missing "keep"
// rather than misreading it). Parsing checks types (integers must be JSON
// integers) and validates; unknown fields are ignored.
absl::StatusOr<Plan> PlanFromJson(const std::string& text);
std::string PlanToJson(const Plan& plan);

absl::StatusOr<Plan> ReadPlan(const std::string& path);
// Validates, then writes atomically.
absl::Status WritePlan(const Plan& plan, const std::string& path);

}  // namespace moend

#endif  // MOEND_CORE_PLAN_H_

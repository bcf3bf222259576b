// Plan solvers of DESIGN.md section 4: choose one tuple per unit of a
// sensitivity table to minimize sum_u s(u, t_u) subject to
// sum_u bytes(u, t_u, context) <= budget. A unit is a layer (s, LayerBytes)
// or, per-head routing, a (layer, KV head) (s_head, LayerBytes of one head).
#ifndef MOEND_CORE_SOLVER_H_
#define MOEND_CORE_SOLVER_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "core/plan.h"
#include "core/sensitivity_table.h"

namespace moend {

enum class SolverKind {
  // The paper's: start at (1,16,16) in every layer; repeatedly apply the one
  // single-layer move to a cheaper tuple with the least
  // (delta s)/(delta bytes) until the budget holds. Moves with delta s <= 0
  // have ratio <= 0 and so come first. Ties: larger bytes saved, then lower
  // layer, then the tuple's lower index in the table.
  kGreedy,
  // The multiple-choice knapsack optimum, exact in bytes. Ties in total s:
  // fewer bytes.
  kExact,
  // Baseline: the same keep in every layer at 16/16 bits; the fitting keep
  // with the least total s (ties: fewer bytes, then larger keep).
  k1d,
  // Baseline: the same tuple in every layer; the fitting tuple with the least
  // total s (ties: fewer bytes, then lower table index).
  k2dUniform,
  // Baseline: keep 1 in every layer, per-layer (kbits, vbits) solved exactly
  // (the knapsack optimum over the keep-1 tuples). Often infeasible.
  k2d,
};

// What takes one tuple.
enum class SolveUnits {
  // (layer, KV head) for greedy and exact when the table has s_head; layers
  // otherwise.
  kAuto,
  kLayer,
  // (layer, KV head); InvalidArgument for a table without s_head or for the
  // uniform baselines (1d, 2d_uniform, 2d), which are per layer by definition.
  kHead,
};
const char* SolveUnitsName(SolveUnits units);  // "auto", "layer", "head"
absl::StatusOr<SolveUnits> ParseSolveUnits(std::string_view name);

// "greedy", "exact", "1d", "2d_uniform", "2d".
const char* SolverName(SolverKind kind);
// The inverse of SolverName; InvalidArgument listing the allowed names.
absl::StatusOr<SolverKind> ParseSolverKind(std::string_view name);

// Solves `table` under `budget` (context 0 in a ratio budget means the
// table's compression_point). Bytes of layer l with tuple t are
// LayerBytes(table.kv_shape(), t, context).
//
// Errors:
// - InvalidArgument: an invalid table or budget (the message says what is
//   allowed), or a table without the tuples the solver needs (1d: no
//   (keep,16,16) tuple; 2d: no keep-1 tuple).
// - ResourceExhausted: the budget is infeasible for this solver; the message
//   names the smallest feasible budget in bytes and as a ratio, e.g. "budget
//   1200 bytes at context 4096 is below the smallest feasible exact plan,
//   3456 bytes (ratio 18.2)".
// - Internal: the exact search exceeded its state limit (kMaxExactStates);
//   not expected for sensitivity tables, documented so that memory stays
//   bounded for any input.
absl::StatusOr<Plan> Solve(const SensitivityTable& table, const Budget& budget, SolverKind kind,
                           SolveUnits units = SolveUnits::kAuto);

// Upper bound on the states the exact solver's dynamic program may hold.
inline constexpr int64_t kMaxExactStates = int64_t{1} << 23;

}  // namespace moend

#endif  // MOEND_CORE_SOLVER_H_

#include "core/solver.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <queue>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/compression.h"
#include "core/status_macros.h"

namespace moend {

namespace {

constexpr struct {
  SolverKind kind;
  const char* name;
} kSolverNames[] = {
    {SolverKind::kGreedy, "greedy"}, {SolverKind::kExact, "exact"},
    {SolverKind::k1d, "1d"},         {SolverKind::k2dUniform, "2d_uniform"},
    {SolverKind::k2d, "2d"},
};

// The problem in numbers. A unit is what takes one tuple: a layer, or a
// (layer, KV head) when solving per head (unit u = layer u / heads, head
// u % heads). bytes[u][t] = the unit's bytes under tuple t at the context
// (LayerBytes of the layer, or of one head), err[u][t] its s.
struct Problem {
  const SensitivityTable* table = nullptr;
  int64_t context = 0;
  int64_t full_bytes = 0;    // sum of FullLayerBytes at the context
  int64_t budget_bytes = 0;  // the budget asked for
  int64_t heads = 0;         // KV heads per layer when units are heads; 0: units are layers
  std::vector<std::vector<int64_t>> bytes;  // [unit][tuple]
  std::vector<std::vector<double>> err;     // [unit][tuple]

  int num_units() const { return static_cast<int>(bytes.size()); }
  int num_tuples() const { return static_cast<int>(table->tuples.size()); }
  double s(int unit, int tuple) const { return err[unit][tuple]; }
};

// Tuple index chosen per unit.
using Choice = std::vector<int>;

absl::StatusOr<Problem> MakeProblem(const SensitivityTable& table, const Budget& budget,
                                    bool per_head) {
  MOEND_RETURN_IF_ERROR(table.Validate());
  MOEND_RETURN_IF_ERROR(budget.Validate());
  Problem p;
  p.table = &table;
  p.context = budget.context > 0 ? budget.context : table.compression_point;
  const KvShape shape = table.kv_shape();  // every layer has this shape
  // Validated shapes and context <= 2^30 keep one layer below 2^56 bytes; the
  // sum over at most 100000 layers is checked here.
  __int128 full = 0;
  for (int64_t l = 0; l < table.num_layers; ++l) full += FullLayerBytes(shape, p.context);
  if (full > (__int128{1} << 62)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the full cache at context ", p.context, " exceeds 2^62 bytes; use a shorter context"));
  }
  p.full_bytes = static_cast<int64_t>(full);
  if (budget.kind == Budget::Kind::kRatio) {
    // floor(full / R), in long double so that 2^62-sized counts stay exact.
    p.budget_bytes = static_cast<int64_t>(
        std::floor(static_cast<long double>(p.full_bytes) / static_cast<long double>(budget.ratio)));
  } else {
    p.budget_bytes = budget.bytes;
  }
  if (per_head) {
    // One head's bytes: LayerBytes is num_kv_heads times them exactly.
    p.heads = table.num_kv_heads;
    std::vector<int64_t> head_bytes(table.tuples.size());
    for (size_t t = 0; t < table.tuples.size(); ++t) {
      head_bytes[t] = LayerBytes({1, table.head_dim}, table.tuples[t], p.context);
    }
    for (int64_t l = 0; l < table.num_layers; ++l) {
      for (int64_t h = 0; h < p.heads; ++h) {
        p.bytes.push_back(head_bytes);
        p.err.push_back(table.s_head[l][h]);
      }
    }
    return p;
  }
  p.bytes.assign(table.num_layers, std::vector<int64_t>(table.tuples.size()));
  for (int64_t l = 0; l < table.num_layers; ++l) {
    for (size_t t = 0; t < table.tuples.size(); ++t) {
      p.bytes[l][t] = LayerBytes(shape, table.tuples[t], p.context);
    }
  }
  p.err = table.s;
  return p;
}

double Ratio(const Problem& p, int64_t bytes) {
  return bytes > 0 ? static_cast<double>(p.full_bytes) / static_cast<double>(bytes) : 0.0;
}

// ResourceExhausted naming the smallest feasible budget of `kind`. The ratio
// is rounded down (3 decimals) so that asking for it is feasible.
absl::Status Infeasible(const Problem& p, const Budget& budget, SolverKind kind,
                        int64_t min_bytes) {
  const std::string asked =
      budget.kind == Budget::Kind::kRatio
          ? absl::StrFormat("budget of ratio %g (%d bytes at context %d)", budget.ratio,
                            p.budget_bytes, p.context)
          : absl::StrFormat("budget %d bytes at context %d", p.budget_bytes, p.context);
  std::string ratio = absl::StrFormat("%.3f", std::floor(Ratio(p, min_bytes) * 1000.0) / 1000.0);
  while (ratio.back() == '0') ratio.pop_back();
  if (ratio.back() == '.') ratio.pop_back();
  return absl::ResourceExhaustedError(
      absl::StrFormat("%s is below the smallest feasible %s plan, %d bytes (ratio %s)", asked,
                      SolverName(kind), min_bytes, ratio));
}

Plan MakePlan(const Problem& p, const Choice& choice, SolverKind kind) {
  Plan plan;
  plan.model = p.table->model;
  plan.solver = std::string(SolverName(kind));
  plan.budget_bytes = p.budget_bytes;
  plan.context = p.context;
  for (int u = 0; u < p.num_units(); ++u) {
    const int t = choice[u];
    if (p.heads == 0) {
      plan.layers.push_back({p.table->tuples[t], p.bytes[u][t], p.s(u, t), {}});
    } else {
      if (u % p.heads == 0) plan.layers.emplace_back();
      PlanLayer& layer = plan.layers.back();
      layer.heads.push_back({p.table->tuples[t], p.bytes[u][t], p.s(u, t)});
      layer.bytes += p.bytes[u][t];
      layer.predicted_error += p.s(u, t);
    }
    plan.total_bytes += p.bytes[u][t];
    plan.predicted_error += p.s(u, t);
  }
  plan.ratio = Ratio(p, plan.total_bytes);
  return plan;
}

// ---------------------------------------------------------------------------
// greedy

struct GreedyMove {
  int layer = -1;
  int to = -1;        // tuple index
  double ds = 0;      // s(to) - s(current)
  int64_t db = 0;     // bytes(current) - bytes(to), > 0
};

// True if `a` is a better move than `b`: smaller ds/db (compared without
// division), then more bytes saved, then lower layer, then lower tuple index.
bool BetterMove(const GreedyMove& a, const GreedyMove& b) {
  const double lhs = a.ds * static_cast<double>(b.db);
  const double rhs = b.ds * static_cast<double>(a.db);
  if (lhs != rhs) return lhs < rhs;
  if (a.db != b.db) return a.db > b.db;
  if (a.layer != b.layer) return a.layer < b.layer;
  return a.to < b.to;
}

// The best move of `layer` from tuple `from`, or layer -1 if none is cheaper.
GreedyMove BestMove(const Problem& p, int layer, int from) {
  GreedyMove best;
  const int64_t from_bytes = p.bytes[layer][from];
  const double from_s = p.s(layer, from);
  for (int t = 0; t < p.num_tuples(); ++t) {
    if (p.bytes[layer][t] >= from_bytes) continue;
    GreedyMove m{layer, t, p.s(layer, t) - from_s, from_bytes - p.bytes[layer][t]};
    if (best.layer < 0 || BetterMove(m, best)) best = m;
  }
  return best;
}

Choice SolveGreedy(const Problem& p) {
  const std::vector<CompressionTuple>& tuples = p.table->tuples;
  const int num_layers = p.num_units();
  Choice choice(num_layers, -1);
  const auto full_it =
      std::find(tuples.begin(), tuples.end(), CompressionTuple{1.0, kFp16Bits, kFp16Bits});
  for (int l = 0; l < num_layers; ++l) {
    if (full_it != tuples.end()) {
      choice[l] = static_cast<int>(full_it - tuples.begin());
      continue;
    }
    // The table lacks (1,16,16): start at the layer's most expensive tuple
    // (ties: least s, then lower index), the nearest thing to "uncompressed".
    int best = 0;
    for (int t = 1; t < p.num_tuples(); ++t) {
      if (p.bytes[l][t] > p.bytes[l][best] ||
          (p.bytes[l][t] == p.bytes[l][best] && p.s(l, t) < p.s(l, best))) {
        best = t;
      }
    }
    choice[l] = best;
  }
  int64_t total = 0;
  for (int l = 0; l < num_layers; ++l) total += p.bytes[l][choice[l]];

  // One entry per layer: its best move from its current tuple. Only the layer
  // that moves changes, so a plain heap needs no invalidation.
  auto worse = [](const GreedyMove& a, const GreedyMove& b) { return BetterMove(b, a); };
  std::priority_queue<GreedyMove, std::vector<GreedyMove>, decltype(worse)> heap(worse);
  if (total > p.budget_bytes) {
    for (int l = 0; l < num_layers; ++l) {
      GreedyMove m = BestMove(p, l, choice[l]);
      if (m.layer >= 0) heap.push(m);
    }
  }
  // Terminates: every layer can always move to its cheapest tuple, and the
  // caller checked that all-cheapest fits.
  while (total > p.budget_bytes && !heap.empty()) {
    const GreedyMove m = heap.top();
    heap.pop();
    choice[m.layer] = m.to;
    total -= m.db;
    GreedyMove next = BestMove(p, m.layer, m.to);
    if (next.layer >= 0) heap.push(next);
  }
  return choice;
}

// ---------------------------------------------------------------------------
// exact: multiple-choice knapsack
//
// 1. Per layer, keep the Pareto items (ParetoItems: bytes strictly
//    increasing, s strictly decreasing; an item with more bytes and no less s
//    is never needed, and ties in s go to fewer bytes).
// 2. Lower convex hull per layer (LowerHull); merge the hull segments by
//    slope. Walking them from the all-cheapest plan solves the LP relaxation;
//    its multiplier lambda = -slope of the first segment that does not fit
//    (WalkHulls). Filling the budget along the same walk, then with
//    single-layer upgrades into the leftover bytes (FillLeftover), gives a
//    feasible incumbent of value U.
// 3. Lagrangian bound (MakeLagrangianBound): for any lambda >= 0 and any plan
//    x within budget B,
//      sum s(x) >= sum_l (s_l(x_l) + lambda b_l(x_l)) - lambda B
//              >= lower + (s_l(j) + lambda b_l(j) - h_l)   for x_l = j,
//    h_l = min_j (s_lj + lambda b_lj), lower = sum_l h_l - lambda B. An item
//    whose bound exceeds U is in no plan better than U and is dropped.
// 4. A dynamic program over layers in index order whose states are the Pareto
//    frontier (bytes, s) of partial plans, in exact integer bytes (no rounding
//    to a unit) (FrontierDp). A dominated partial plan (no fewer bytes, no
//    less s) is dropped: any completion of it is no better than the same
//    completion of its dominator. A partial plan is pruned when it cannot fit
//    the cheapest completion or when its s plus the LP bound of the remaining
//    layers (over the items left, SuffixBound) exceeds U. The optimum's
//    prefixes are never pruned (their bounds are <= the optimum <= U), so the
//    last layer's frontier holds the optimum (ExactSearch). First a
//    beam-limited run of the same DP (BeamSearch, 16 states a layer) lowers U
//    cheaply, which makes the exact run small.
// Bounds compare with a relative slack of 1e-9, so rounding can only keep
// more states, never drop the optimum. The state count is capped
// (kMaxExactStates) so memory stays bounded on any input.

struct Item {
  int64_t bytes;
  double s;
  int tuple;
};

// Pareto items of one layer: bytes strictly increasing, s strictly decreasing.
std::vector<Item> ParetoItems(std::vector<Item> items) {
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    if (a.bytes != b.bytes) return a.bytes < b.bytes;
    if (a.s != b.s) return a.s < b.s;
    return a.tuple < b.tuple;
  });
  std::vector<Item> out;
  for (const Item& it : items) {
    if (out.empty() || it.s < out.back().s) out.push_back(it);
  }
  return out;
}

// The lower convex hull of one layer's Pareto items and the slopes of its
// segments.
struct Hull {
  std::vector<int> points;     // indices into the items, bytes increasing
  std::vector<double> slopes;  // [i]: ds/db from points[i] to points[i + 1], < 0,
                               // non-decreasing
  int num_segments() const { return static_cast<int>(slopes.size()); }
};

Hull LowerHull(const std::vector<Item>& items) {
  Hull hull;
  std::vector<int>& points = hull.points;
  for (int i = 0; i < static_cast<int>(items.size()); ++i) {
    while (points.size() >= 2) {
      const Item& o = items[points[points.size() - 2]];
      const Item& a = items[points.back()];
      const Item& b = items[i];
      const double cross = static_cast<double>(a.bytes - o.bytes) * (b.s - o.s) -
                           (a.s - o.s) * static_cast<double>(b.bytes - o.bytes);
      if (cross > 0) break;
      points.pop_back();
    }
    points.push_back(i);
  }
  double prev = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i + 1 < points.size(); ++i) {
    const Item& a = items[points[i]];
    const Item& b = items[points[i + 1]];
    // Convex in exact arithmetic; max() keeps rounding from reordering.
    prev = std::max(prev, (b.s - a.s) / static_cast<double>(b.bytes - a.bytes));
    hull.slopes.push_back(prev);
  }
  return hull;
}

// A lower bound on sum_{l>=d} s(l, x_l) over plans of the layers >= d that
// fit r bytes and use only the given items: the LP relaxation, i.e. the
// lower convex hulls of the layers merged by slope. Convex, piecewise linear
// and decreasing in r; +infinity below the cheapest completion.
class SuffixBound {
 public:
  // items[l]: candidate items of layer l, bytes increasing and s decreasing.
  explicit SuffixBound(const std::vector<std::vector<Item>>& items) {
    const int num_layers = static_cast<int>(items.size());
    min_bytes_.assign(num_layers + 1, 0);
    base_s_.assign(num_layers + 1, 0.0);
    pieces_.resize(num_layers + 1);
    pieces_[num_layers].push_back({0, 0.0, 0.0});
    std::vector<Segment> suffix, layer, merged;
    for (int l = num_layers - 1; l >= 0; --l) {
      min_bytes_[l] = min_bytes_[l + 1] + items[l].front().bytes;
      base_s_[l] = base_s_[l + 1] + items[l].front().s;
      layer.clear();
      const Hull hull = LowerHull(items[l]);
      for (int i = 0; i < hull.num_segments(); ++i) {
        const int64_t db = items[l][hull.points[i + 1]].bytes - items[l][hull.points[i]].bytes;
        layer.push_back({hull.slopes[i], db});
      }
      merged.resize(suffix.size() + layer.size());
      std::merge(suffix.begin(), suffix.end(), layer.begin(), layer.end(), merged.begin(),
                 [](const Segment& a, const Segment& b) { return a.slope < b.slope; });
      suffix.swap(merged);
      std::vector<Piece>& pieces = pieces_[l];
      pieces.reserve(suffix.size() + 1);
      int64_t cum_bytes = 0;
      double cum_s = 0;
      for (const Segment& seg : suffix) {
        pieces.push_back({cum_bytes, cum_s, seg.slope});
        cum_bytes += seg.bytes;
        cum_s += seg.slope * static_cast<double>(seg.bytes);
      }
      pieces.push_back({cum_bytes, cum_s, 0.0});  // flat beyond the last breakpoint
    }
  }

  int64_t min_bytes(int d) const { return min_bytes_[d]; }

  double operator()(int d, int64_t r) const {
    if (r < min_bytes_[d]) return std::numeric_limits<double>::infinity();
    const int64_t x = r - min_bytes_[d];
    const std::vector<Piece>& pieces = pieces_[d];
    // The last piece whose start is <= x.
    auto it = std::upper_bound(pieces.begin(), pieces.end(), x,
                               [](int64_t v, const Piece& p) { return v < p.start_bytes; });
    const Piece& p = *(it - 1);
    return base_s_[d] + p.start_s + p.slope * static_cast<double>(x - p.start_bytes);
  }

 private:
  struct Segment {
    double slope;  // ds/db < 0
    int64_t bytes;
  };
  struct Piece {
    int64_t start_bytes;  // bytes above the cheapest completion where it starts
    double start_s;       // bound there, relative to base_s_
    double slope;
  };
  std::vector<int64_t> min_bytes_;          // [d] cheapest completion
  std::vector<double> base_s_;              // [d] its s
  std::vector<std::vector<Piece>> pieces_;  // [d]
};

// A plan as item indices into each layer's Pareto list, with its totals.
struct Incumbent {
  std::vector<int> pick;  // [layer] index into pareto[layer]
  double s = 0;
  int64_t bytes = 0;

  // Less s, ties: fewer bytes.
  bool BetterThan(const Incumbent& other) const {
    return s < other.s || (s == other.s && bytes < other.bytes);
  }
};

// Step 2: the LP relaxation's walk along the hull segments merged by slope,
// from the all-cheapest plan. Each segment that fits the budget is taken; the
// first one that does not fixes lambda and blocks its layer.
struct HullWalk {
  std::vector<int> pick;  // [layer] the hull point reached, as an index into pareto[layer]
  int64_t bytes = 0;      // bytes of that plan, <= budget
  double lambda = 0;      // -slope of the first segment that did not fit; 0 if all fit
};

HullWalk WalkHulls(const std::vector<std::vector<Item>>& pareto, int64_t budget) {
  const int num_layers = static_cast<int>(pareto.size());
  struct Segment {
    double slope;  // ds/db < 0
    int layer;
    int index;     // segment index within the layer's hull
  };
  std::vector<Hull> hulls(num_layers);
  std::vector<Segment> segments;
  HullWalk walk;
  for (int l = 0; l < num_layers; ++l) {
    walk.bytes += pareto[l].front().bytes;
    hulls[l] = LowerHull(pareto[l]);
    for (int i = 0; i < hulls[l].num_segments(); ++i) {
      segments.push_back({hulls[l].slopes[i], l, i});
    }
  }
  std::sort(segments.begin(), segments.end(), [](const Segment& a, const Segment& b) {
    if (a.slope != b.slope) return a.slope < b.slope;
    if (a.layer != b.layer) return a.layer < b.layer;
    return a.index < b.index;
  });
  std::vector<int> hull_pos(num_layers, 0);
  std::vector<char> blocked(num_layers, 0);
  double lambda = -1;
  for (const Segment& seg : segments) {
    if (blocked[seg.layer] || seg.index != hull_pos[seg.layer]) continue;
    const std::vector<int>& points = hulls[seg.layer].points;
    const int64_t db =
        pareto[seg.layer][points[seg.index + 1]].bytes - pareto[seg.layer][points[seg.index]].bytes;
    if (walk.bytes + db <= budget) {
      walk.bytes += db;
      ++hull_pos[seg.layer];
    } else {
      if (lambda < 0) lambda = -seg.slope;
      blocked[seg.layer] = 1;
    }
  }
  walk.lambda = lambda < 0 ? 0 : lambda;
  walk.pick.resize(num_layers);
  for (int l = 0; l < num_layers; ++l) walk.pick[l] = hulls[l].points[hull_pos[l]];
  return walk;
}

// Step 2, continued: the walk's plan, filled up with single-layer upgrades
// into the leftover bytes, best s gain first.
Incumbent FillLeftover(const std::vector<std::vector<Item>>& pareto, int64_t budget,
                       const HullWalk& walk) {
  const int num_layers = static_cast<int>(pareto.size());
  Incumbent inc;
  inc.pick = walk.pick;
  inc.bytes = walk.bytes;
  for (;;) {
    int best_layer = -1, best_item = -1;
    double best_gain = 0;
    for (int l = 0; l < num_layers; ++l) {
      const Item& cur = pareto[l][inc.pick[l]];
      for (int j = inc.pick[l] + 1; j < static_cast<int>(pareto[l].size()); ++j) {
        if (pareto[l][j].bytes - cur.bytes > budget - inc.bytes) break;
        const double gain = cur.s - pareto[l][j].s;
        if (gain > best_gain) best_gain = gain, best_layer = l, best_item = j;
      }
    }
    if (best_layer < 0) break;
    const Item& from = pareto[best_layer][inc.pick[best_layer]];
    inc.bytes += pareto[best_layer][best_item].bytes - from.bytes;
    inc.pick[best_layer] = best_item;
  }
  // Summed in layer order, like the DP.
  for (int l = 0; l < num_layers; ++l) inc.s += pareto[l][inc.pick[l]].s;
  return inc;
}

// Step 3: the Lagrangian bound at lambda. An item's bound is
// lower + reduced_cost(l, item).
struct LagrangianBound {
  double lambda = 0;
  std::vector<double> h;  // [layer] min over its items of s + lambda * bytes
  double lower = 0;       // sum_l h_l - lambda * budget, a lower bound on every plan
  double slack = 0;       // rounding slack for comparisons against the incumbent

  double reduced_cost(int layer, const Item& it) const {
    return it.s + lambda * static_cast<double>(it.bytes) - h[layer];
  }
};

LagrangianBound MakeLagrangianBound(const std::vector<std::vector<Item>>& pareto, int64_t budget,
                                    double lambda, double incumbent_s) {
  const int num_layers = static_cast<int>(pareto.size());
  LagrangianBound lb;
  lb.lambda = lambda;
  lb.h.resize(num_layers);
  double sum_h = 0;
  for (int l = 0; l < num_layers; ++l) {
    double m = std::numeric_limits<double>::infinity();
    for (const Item& it : pareto[l]) m = std::min(m, it.s + lambda * static_cast<double>(it.bytes));
    lb.h[l] = m;
    sum_h += m;
  }
  const double lambda_budget = lambda * static_cast<double>(budget);
  lb.slack = 1e-9 * (std::abs(incumbent_s) + std::abs(sum_h) + lambda_budget) + 1e-300;
  lb.lower = sum_h - lambda_budget;
  return lb;
}

// Step 4: the search space of the DP over layers in index order, shared by
// the exact search and the beam heuristic. Its states are partial plans of
// layers [0, l) on the Pareto frontier of (bytes, s), sorted by bytes. Items
// whose Lagrangian bound exceeds `limit` are left out, and so are partial
// plans whose s plus the LP bound of the remaining layers (over the items
// left) exceeds it, or that cannot fit the cheapest completion.
class FrontierDp {
 public:
  struct State {
    int64_t bytes;
    double s;
    int32_t parent;  // index into the previous layer's states
    int32_t item;    // index into the layer's Pareto items
  };

  FrontierDp(const std::vector<std::vector<Item>>& pareto, int64_t budget,
             const LagrangianBound& lb, double limit)
      : pareto_(pareto), budget_(budget), limit_(limit), kept_(pareto.size()),
        bound_(KeptItems(pareto, budget, lb, limit, &kept_)) {}

  int num_layers() const { return static_cast<int>(pareto_.size()); }
  // False when some layer has no item within the limit: no plan is.
  bool feasible() const {
    return std::none_of(kept_.begin(), kept_.end(), [](const auto& k) { return k.empty(); });
  }

  // The frontier of partial plans of layers [0, l + 1) reached from `cur`,
  // the frontier of layers [0, l). Ties in s go to fewer bytes.
  void Extend(int l, const std::vector<State>& cur, std::vector<State>* out) {
    next_.clear();
    runs_.assign(1, 0);
    for (int j : kept_[l]) {
      const Item& it = pareto_[l][j];
      const int64_t max_bytes = budget_ - bound_.min_bytes(l + 1) - it.bytes;
      for (int32_t i = 0; i < static_cast<int32_t>(cur.size()); ++i) {
        const State& st = cur[i];
        if (st.bytes > max_bytes) break;  // states are sorted by bytes
        const int64_t nb = st.bytes + it.bytes;
        const double ns = st.s + it.s;
        if (ns + bound_(l + 1, budget_ - nb) > limit_) continue;
        next_.push_back({nb, ns, i, j});
      }
      runs_.push_back(next_.size());  // each item's run is sorted by bytes
    }
    // Merge the sorted runs pairwise.
    auto by_bytes = [](const State& a, const State& b) {
      if (a.bytes != b.bytes) return a.bytes < b.bytes;
      return a.s < b.s;
    };
    while (runs_.size() > 2) {
      std::vector<size_t> merged_runs(1, 0);
      for (size_t r = 0; r + 1 < runs_.size(); r += 2) {
        const size_t end = r + 2 < runs_.size() ? runs_[r + 2] : runs_[r + 1];
        std::inplace_merge(next_.begin() + runs_[r], next_.begin() + runs_[r + 1],
                           next_.begin() + end, by_bytes);
        merged_runs.push_back(end);
      }
      runs_.swap(merged_runs);
    }
    out->clear();
    for (const State& st : next_) {
      if (out->empty() || st.s < out->back().s) out->push_back(st);
    }
  }

  // s plus the LP bound of layers [d, L) within the bytes left.
  double Bound(int d, const State& st) const { return st.s + bound_(d, budget_ - st.bytes); }

 private:
  // Fills kept[l] with the item indices of layer l within the limit and the
  // budget, and returns their items for the suffix bound.
  static std::vector<std::vector<Item>> KeptItems(const std::vector<std::vector<Item>>& pareto,
                                                  int64_t budget, const LagrangianBound& lb,
                                                  double limit,
                                                  std::vector<std::vector<int>>* kept) {
    const int num_layers = static_cast<int>(pareto.size());
    int64_t min_total = 0;
    for (const auto& items : pareto) min_total += items.front().bytes;
    std::vector<std::vector<Item>> kept_items(num_layers);
    for (int l = 0; l < num_layers; ++l) {
      for (int j = 0; j < static_cast<int>(pareto[l].size()); ++j) {
        const Item& it = pareto[l][j];
        if (lb.lower + lb.reduced_cost(l, it) > limit) continue;
        if (it.bytes - pareto[l].front().bytes > budget - min_total) break;
        (*kept)[l].push_back(j);
        kept_items[l].push_back(it);
      }
      // SuffixBound needs an item in every layer; an infeasible DP never asks.
      if (kept_items[l].empty()) return {};
    }
    return kept_items;
  }

  const std::vector<std::vector<Item>>& pareto_;
  int64_t budget_;
  double limit_;
  std::vector<std::vector<int>> kept_;  // [layer] item indices within the limit
  SuffixBound bound_;
  std::vector<State> next_;  // scratch of Extend
  std::vector<size_t> runs_;
};

// The least-s plan (ties: fewer bytes) of the last frontier, traced back
// through the parents.
Incumbent Backtrack(const std::vector<std::vector<FrontierDp::State>>& states) {
  const int num_layers = static_cast<int>(states.size()) - 1;
  // The frontier's last state has the least s; Extend's strict filter
  // resolved ties in s to fewer bytes.
  Incumbent result;
  result.s = states[num_layers].back().s;
  result.bytes = states[num_layers].back().bytes;
  result.pick.resize(num_layers);
  int32_t idx = static_cast<int32_t>(states[num_layers].size()) - 1;
  for (int l = num_layers; l >= 1; --l) {
    const FrontierDp::State& st = states[l][idx];
    result.pick[l - 1] = st.item;
    idx = st.parent;
  }
  return result;
}

// The exact search: the least-s plan (ties: fewer bytes) among those whose
// every prefix bound stays <= `limit`. Every plan with s <= limit (less the
// rounding slack the caller adds) survives the pruning, so when the limit is
// an incumbent's s this is the optimum. nullopt when no plan is within the
// limit; Internal past kMaxExactStates.
absl::StatusOr<std::optional<Incumbent>> ExactSearch(const std::vector<std::vector<Item>>& pareto,
                                                     int64_t budget, const LagrangianBound& lb,
                                                     double limit) {
  FrontierDp dp(pareto, budget, lb, limit);
  if (!dp.feasible()) return std::nullopt;
  std::vector<std::vector<FrontierDp::State>> states(dp.num_layers() + 1);
  states[0].push_back({0, 0.0, -1, -1});
  int64_t total_states = 1;
  for (int l = 0; l < dp.num_layers(); ++l) {
    dp.Extend(l, states[l], &states[l + 1]);
    if (states[l + 1].empty()) return std::nullopt;
    total_states += static_cast<int64_t>(states[l + 1].size());
    if (total_states > kMaxExactStates) {
      return absl::InternalError(absl::StrCat(
          "exact solver: the search exceeded ", kMaxExactStates,
          " states; the sensitivity table is pathological for the bound"));
    }
  }
  return Backtrack(states);
}

// A heuristic on the same search space: each layer keeps only the
// `beam_width` states with the least s + bound, which finds a good incumbent
// fast. At most beam_width states a layer, so no state limit applies.
std::optional<Incumbent> BeamSearch(const std::vector<std::vector<Item>>& pareto, int64_t budget,
                                    const LagrangianBound& lb, double limit, size_t beam_width) {
  FrontierDp dp(pareto, budget, lb, limit);
  if (!dp.feasible()) return std::nullopt;
  std::vector<std::vector<FrontierDp::State>> states(dp.num_layers() + 1);
  states[0].push_back({0, 0.0, -1, -1});
  std::vector<std::pair<double, size_t>> keyed;
  std::vector<FrontierDp::State> kept_states;
  for (int l = 0; l < dp.num_layers(); ++l) {
    std::vector<FrontierDp::State>& out = states[l + 1];
    dp.Extend(l, states[l], &out);
    if (out.empty()) return std::nullopt;
    if (out.size() <= beam_width) continue;
    keyed.clear();
    for (size_t i = 0; i < out.size(); ++i) keyed.push_back({dp.Bound(l + 1, out[i]), i});
    std::nth_element(keyed.begin(), keyed.begin() + beam_width, keyed.end());
    keyed.resize(beam_width);
    std::sort(keyed.begin(), keyed.end(),
              [](const auto& a, const auto& b) { return a.second < b.second; });
    kept_states.clear();
    for (const auto& k : keyed) kept_states.push_back(out[k.second]);
    out.swap(kept_states);
  }
  return Backtrack(states);
}

// The optimum over `pareto` (each layer's Pareto items, bytes increasing)
// within `budget`, as an item index into pareto[l] per layer. The caller has
// checked that the all-cheapest plan fits. Steps as in the comment above.
absl::StatusOr<std::vector<int>> SolveKnapsack(const std::vector<std::vector<Item>>& pareto,
                                               int64_t budget) {
  const int num_layers = static_cast<int>(pareto.size());
  int64_t max_total = 0;
  for (const auto& items : pareto) max_total += items.back().bytes;
  if (max_total <= budget) {  // every layer's least-s item fits
    std::vector<int> pick(num_layers);
    for (int l = 0; l < num_layers; ++l) pick[l] = static_cast<int>(pareto[l].size()) - 1;
    return pick;
  }
  const HullWalk walk = WalkHulls(pareto, budget);
  Incumbent best = FillLeftover(pareto, budget, walk);
  const LagrangianBound lb = MakeLagrangianBound(pareto, budget, walk.lambda, best.s);
  // A beam search usually improves the incumbent a lot for little time,
  // which makes the exact search small.
  constexpr size_t kBeamWidth = 16;
  const std::optional<Incumbent> beam =
      BeamSearch(pareto, budget, lb, best.s + lb.slack, kBeamWidth);
  if (beam && beam->BetterThan(best)) best = *beam;
  // Every plan with s <= U survives the exact search's pruning, so its best
  // plan, or the incumbent if that is no worse, is the optimum.
  MOEND_ASSIGN_OR_RETURN(const std::optional<Incumbent> found,
                         ExactSearch(pareto, budget, lb, best.s + lb.slack));
  if (found && found->BetterThan(best)) return found->pick;
  return best.pick;
}

// Exact over the tuples that `allowed` accepts in every layer. InvalidArgument
// when some layer has no allowed tuple (only 2d can: it allows keep 1 only);
// ResourceExhausted when the cheapest allowed plan exceeds the budget.
template <typename Allowed>
absl::StatusOr<Choice> SolveExactOver(const Problem& p, const Budget& budget, SolverKind kind,
                                      Allowed allowed) {
  std::vector<std::vector<Item>> pareto(p.num_units());
  int64_t min_total = 0;
  for (int l = 0; l < p.num_units(); ++l) {
    std::vector<Item> items;
    for (int t = 0; t < p.num_tuples(); ++t) {
      if (allowed(p.table->tuples[t])) items.push_back({p.bytes[l][t], p.s(l, t), t});
    }
    if (items.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("solver ", SolverName(kind),
                                                     " needs tuples with keep 1; the table "
                                                     "has none"));
    }
    pareto[l] = ParetoItems(std::move(items));
    min_total += pareto[l].front().bytes;
  }
  if (min_total > p.budget_bytes) return Infeasible(p, budget, kind, min_total);
  // Every plan's bytes are a multiple of the quantum (the gcd of all item
  // sizes), so the budget rounded down to it admits exactly the same plans.
  int64_t quantum = 0;
  for (const auto& items : pareto) {
    for (const Item& it : items) quantum = std::gcd(quantum, it.bytes);
  }
  const int64_t budget_q = quantum > 0 ? p.budget_bytes / quantum * quantum : p.budget_bytes;
  MOEND_ASSIGN_OR_RETURN(std::vector<int> pick, SolveKnapsack(pareto, budget_q));
  Choice choice(p.num_units());
  for (int l = 0; l < p.num_units(); ++l) choice[l] = pareto[l][pick[l]].tuple;
  return choice;
}

// ---------------------------------------------------------------------------
// uniform baselines: the same tuple in every layer, among `candidates`
// (table indices, in tie-break order after s and bytes).

absl::StatusOr<Choice> SolveUniform(const Problem& p, const Budget& budget, SolverKind kind,
                                    const std::vector<int>& candidates) {
  int best = -1;
  double best_s = 0;
  int64_t best_bytes = 0;
  int64_t min_bytes = std::numeric_limits<int64_t>::max();
  for (int t : candidates) {
    int64_t bytes = 0;
    double s = 0;
    for (int l = 0; l < p.num_units(); ++l) {
      bytes += p.bytes[l][t];
      s += p.s(l, t);
    }
    min_bytes = std::min(min_bytes, bytes);
    if (bytes > p.budget_bytes) continue;
    if (best < 0 || s < best_s || (s == best_s && bytes < best_bytes)) {
      best = t, best_s = s, best_bytes = bytes;
    }
  }
  if (best < 0) return Infeasible(p, budget, kind, min_bytes);
  return Choice(p.num_units(), best);
}

}  // namespace

const char* SolverName(SolverKind kind) {
  for (const auto& e : kSolverNames) {
    if (e.kind == kind) return e.name;
  }
  return "unknown";
}

absl::StatusOr<SolverKind> ParseSolverKind(std::string_view name) {
  std::string allowed;
  for (const auto& e : kSolverNames) {
    if (name == e.name) return e.kind;
    absl::StrAppend(&allowed, allowed.empty() ? "" : ", ", e.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown solver '", std::string(name), "'; allowed: ", allowed));
}

const char* SolveUnitsName(SolveUnits units) {
  switch (units) {
    case SolveUnits::kAuto:
      return "auto";
    case SolveUnits::kLayer:
      return "layer";
    case SolveUnits::kHead:
      return "head";
  }
  return "unknown";
}

absl::StatusOr<SolveUnits> ParseSolveUnits(std::string_view name) {
  for (SolveUnits u : {SolveUnits::kAuto, SolveUnits::kLayer, SolveUnits::kHead}) {
    if (name == SolveUnitsName(u)) return u;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown units '", std::string(name), "'; allowed: auto, layer, head"));
}

absl::StatusOr<Plan> Solve(const SensitivityTable& table, const Budget& budget, SolverKind kind,
                           SolveUnits units) {
  const bool routes = kind == SolverKind::kGreedy || kind == SolverKind::kExact;
  if (units == SolveUnits::kHead) {
    if (!routes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "solver ", SolverName(kind), " gives every layer one tuple; only greedy and exact "
          "route per KV head"));
    }
    if (!table.has_heads()) {
      return absl::InvalidArgumentError(
          "the table has no per-head sensitivities (s_head); calibrate it again with this "
          "version, or solve with units 'layer'");
    }
  }
  const bool per_head =
      units == SolveUnits::kHead || (units == SolveUnits::kAuto && routes && table.has_heads());
  MOEND_ASSIGN_OR_RETURN(const Problem p, MakeProblem(table, budget, per_head));
  Choice choice;
  switch (kind) {
    case SolverKind::kGreedy: {
      int64_t min_total = 0;
      for (int l = 0; l < p.num_units(); ++l) {
        min_total += *std::min_element(p.bytes[l].begin(), p.bytes[l].end());
      }
      if (min_total > p.budget_bytes) return Infeasible(p, budget, kind, min_total);
      choice = SolveGreedy(p);
      break;
    }
    case SolverKind::kExact: {
      MOEND_ASSIGN_OR_RETURN(
          choice, SolveExactOver(p, budget, kind, [](const CompressionTuple&) { return true; }));
      break;
    }
    case SolverKind::k2d: {
      MOEND_ASSIGN_OR_RETURN(choice, SolveExactOver(p, budget, kind, [](const CompressionTuple& t) {
                               return t.keep == 1.0;
                             }));
      break;
    }
    case SolverKind::k1d: {
      // Larger keep first so that it wins ties in s and bytes.
      std::vector<int> candidates;
      for (int t = 0; t < p.num_tuples(); ++t) {
        const CompressionTuple& tu = table.tuples[t];
        if (tu.kbits == kFp16Bits && tu.vbits == kFp16Bits) candidates.push_back(t);
      }
      if (candidates.empty()) {
        return absl::InvalidArgumentError(
            "solver 1d needs tuples with 16-bit K and V; the table has none");
      }
      std::stable_sort(candidates.begin(), candidates.end(), [&](int a, int b) {
        return table.tuples[a].keep > table.tuples[b].keep;
      });
      MOEND_ASSIGN_OR_RETURN(choice, SolveUniform(p, budget, kind, candidates));
      break;
    }
    case SolverKind::k2dUniform: {
      std::vector<int> candidates(p.num_tuples());
      std::iota(candidates.begin(), candidates.end(), 0);
      MOEND_ASSIGN_OR_RETURN(choice, SolveUniform(p, budget, kind, candidates));
      break;
    }
    default:
      return absl::InvalidArgumentError("unknown solver kind");
  }
  Plan plan = MakePlan(p, choice, kind);
  // A solver bug must not reach a node as an over-budget plan.
  if (plan.total_bytes > plan.budget_bytes) {
    return absl::InternalError(absl::StrCat("solver ", SolverName(kind), " produced ",
                                            plan.total_bytes, " bytes over the budget ",
                                            plan.budget_bytes));
  }
  return plan;
}

}  // namespace moend

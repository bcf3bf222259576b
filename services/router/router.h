// The router's core, without gRPC: solves plans for (model, budget, solver)
// over the newest sensitivity table of a model, caches them, and pushes a new
// plan to every subscriber when a newer table lands.
//
//   RegistryTableSource source(registry_client.get());  // registry_table_source.h
//   MOEND_ASSIGN_OR_RETURN(auto router, Router::Create({.tables = &source}));
//   MOEND_ASSIGN_OR_RETURN(PlanPtr plan, router->SolvePlan(
//       {.model = "tinycode", .budget = Budget::Ratio(8), .solver = "exact"}));
//
// State is only caches, so routers scale out: any number may serve the same
// registry. Per model that has been asked for, one background watcher
// long-polls the table source's change feed (with exponential backoff on
// errors), keeps the newest version it has seen, and fans each new version out
// to the subscribers of that model. A SolvePlan for the latest table uses that
// version, so a warm request touches no network; right after a table lands a
// request may still get the previous plan until the watcher has seen it (one
// round trip of the change feed).
//
// A cache miss calls the table source and solves; SolvePlanAsync and
// WatchPlansAsync run that on the router's own solve threads, so that their
// callers (the gRPC callback threads of RouterService) only ever do cache
// lookups and a cold model or a slow registry does not hold them.
//
// Thread-safe.
#ifndef MOEND_SERVICES_ROUTER_ROUTER_H_
#define MOEND_SERVICES_ROUTER_ROUTER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/plan.h"
#include "prometheus/registry.h"
#include "services/router/table_source.h"
#include "services/router/versioned_plan.h"

namespace moend::router {

using PlanPtr = std::shared_ptr<const VersionedPlan>;

struct RouterOptions {
  // Where tables come from. Required; not owned; must outlive the Router.
  TableSource* tables = nullptr;
  // Metrics go here (moend_router_*). Optional (nullptr = not exported); not
  // owned; must outlive the Router.
  prometheus::Registry* metrics = nullptr;
  // Plans (and deterministic solver errors) kept, least recently used evicted
  // first; entries, >= 1. Default 4096 (a 28-layer plan is about 2 KB).
  size_t plan_cache_entries = 4096;
  // Sensitivity tables kept in memory; entries, >= 1. Default 16.
  size_t table_cache_entries = 16;
  // Timeout of one long poll on the change feed. Also bounds how long
  // Shutdown waits for a watcher. Default 2 s.
  absl::Duration watch_poll = absl::Seconds(2);
  // Wait after a failed table-source call in a watcher: starts at
  // backoff_initial and doubles up to backoff_max. Defaults 100 ms and 10 s.
  absl::Duration backoff_initial = absl::Milliseconds(100);
  absl::Duration backoff_max = absl::Seconds(10);
  // Stamps VersionedPlan::created. Default (empty) = absl::Now.
  std::function<absl::Time()> clock{};
  // Threads that serve the cache misses of SolvePlanAsync and
  // WatchPlansAsync (table-source call and solve); >= 1. Default 4.
  int solve_threads = 4;
  // Cache misses that may wait for a solve thread; beyond, the async calls
  // answer ResourceExhausted at once; >= 1. Default 4096.
  size_t max_waiting_solves = 4096;
};

struct PlanRequest {
  std::string model{};         // registered model name; required
  Budget budget{};             // validated with Budget::Validate
  std::string solver{};        // "exact" (also when empty), "greedy", "1d", "2d_uniform", "2d"
  uint64_t table_version = 0;  // 0 = the newest table
  // What takes one tuple (core/solver.h SolveUnits): "auto" (also when
  // empty: per (layer, KV head) for greedy and exact when the table has
  // s_head), "layer", "head".
  std::string units{};
};

struct WatchRequest {  // as PlanRequest, always on the newest table
  std::string model{};
  Budget budget{};
  std::string solver{};
  std::string units{};
};

// An open WatchPlans subscription. Destroying it unsubscribes; once the
// destructor returns, its callback is not running and will not run again.
// Must be destroyed before the Router.
class PlanSubscription {
 public:
  virtual ~PlanSubscription() = default;
};

class Router {
 public:
  // InvalidArgument when options.tables is null or a bound is out of range.
  // Starts the solve threads.
  static absl::StatusOr<std::unique_ptr<Router>> Create(RouterOptions options);
  // Shutdown(); then waits for the solves running, and answers the ones
  // still waiting with Unavailable.
  ~Router();

  // The plan for `request`, from the cache or solved now. Errors:
  // - InvalidArgument: empty model, invalid budget (ratio NaN, infinite or
  //   < 1; bytes <= 0; bytes without a context > 0), unknown solver or
  //   units, units "head" for a table without s_head or a uniform solver;
  //   each message says what is allowed;
  // - NotFound: unknown model, a model without tables, or no such
  //   table_version (from the table source);
  // - ResourceExhausted: the budget is infeasible for the solver (the message
  //   names the smallest feasible budget);
  // - Unavailable: the table source cannot be reached and nothing is cached.
  absl::StatusOr<PlanPtr> SolvePlan(const PlanRequest& request);

  // SolvePlan without blocking on a cache miss. A request answered from the
  // cache (or refused by validation) calls `done` before returning, on the
  // caller's thread; a miss runs on a solve thread, which calls `done`.
  // ResourceExhausted when max_waiting_solves misses already wait.
  using PlanDone = absl::AnyInvocable<void(absl::StatusOr<PlanPtr>) &&>;
  void SolvePlanAsync(const PlanRequest& request, PlanDone done);

  // Called with each plan of a subscription: never two calls at once for one
  // subscription, versions strictly increasing. Runs on the caller's thread
  // (the first plan, inside WatchPlans; a solve thread for WatchPlansAsync)
  // or on the model's watcher thread; it
  // must be quick and must not destroy its own subscription.
  using PlanCallback = std::function<void(PlanPtr)>;

  // Calls `on_plan` with the current plan before returning, then with a new
  // plan each time a newer table of the model lands. A newer table for which
  // this budget is infeasible is skipped (the subscriber keeps its plan;
  // counted in moend_router_watch_skipped_plans_total). Errors as SolvePlan
  // for the current table; then nothing is subscribed.
  absl::StatusOr<std::unique_ptr<PlanSubscription>> WatchPlans(const WatchRequest& request,
                                                               PlanCallback on_plan);

  // WatchPlans without blocking: when the model is known and the current
  // plan cached it all happens before returning, else on a solve thread;
  // `done` gets what WatchPlans returns (on_plan has had the first plan).
  // ResourceExhausted as SolvePlanAsync.
  using WatchDone = absl::AnyInvocable<void(absl::StatusOr<std::unique_ptr<PlanSubscription>>) &&>;
  void WatchPlansAsync(const WatchRequest& request, PlanCallback on_plan, WatchDone done);

  // Stops the watchers (waits up to about watch_poll for each). Subscriptions
  // stay valid but get no new plans; SolvePlan keeps working. Idempotent.
  void Shutdown();

  // Entries in the plan cache now.
  size_t plan_cache_size() const;

 private:
  struct Impl;
  explicit Router(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moend::router

#endif  // MOEND_SERVICES_ROUTER_ROUTER_H_

#include "services/router/router.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/solver.h"
#include "core/status_macros.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "services/router/lru_cache.h"
#include "services/router/work_queue.h"

namespace moend::router {
namespace {

// What a plan is a pure function of.
struct PlanKey {
  std::string model;
  uint64_t table_version = 0;
  Budget::Kind kind = Budget::Kind::kRatio;
  double ratio = 0;
  int64_t bytes = 0;
  int64_t context = 0;
  SolverKind solver = SolverKind::kGreedy;
  SolveUnits units = SolveUnits::kAuto;

  friend bool operator==(const PlanKey&, const PlanKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const PlanKey& k) {
    return H::combine(std::move(h), k.model, k.table_version, static_cast<int>(k.kind), k.ratio,
                      k.bytes, k.context, static_cast<int>(k.solver), static_cast<int>(k.units));
  }
};

struct TableKey {
  std::string model;
  uint64_t version = 0;
  friend bool operator==(const TableKey&, const TableKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const TableKey& k) {
    return H::combine(std::move(h), k.model, k.version);
  }
};

// A validated request: what Solve needs.
struct Query {
  Budget budget;
  SolverKind solver = SolverKind::kGreedy;
  SolveUnits units = SolveUnits::kAuto;
};

absl::StatusOr<Query> Validate(const std::string& model, const Budget& budget,
                               const std::string& solver, const std::string& units) {
  if (model.empty()) {
    return absl::InvalidArgumentError("model is required: give the name of a registered model");
  }
  MOEND_RETURN_IF_ERROR(budget.Validate());
  MOEND_ASSIGN_OR_RETURN(SolverKind kind, ParseSolverKind(solver.empty() ? "exact" : solver));
  MOEND_ASSIGN_OR_RETURN(SolveUnits solve_units, ParseSolveUnits(units.empty() ? "auto" : units));
  return Query{budget, kind, solve_units};
}

class Subscriber {
 public:
  Subscriber(Query query, Router::PlanCallback on_plan)
      : query_(query), on_plan_(std::move(on_plan)) {}
  const Query& query() const { return query_; }

  // Passes `plan` on unless it is not newer than the last one or the
  // subscriber is closed.
  void Offer(const PlanPtr& plan) {
    absl::MutexLock lock(&mu_);
    if (closed_ || plan->table_version <= last_version_) return;
    last_version_ = plan->table_version;
    on_plan_(plan);
  }
  // After Close returns no callback runs.
  void Close() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }

 private:
  const Query query_;
  const Router::PlanCallback on_plan_;
  absl::Mutex mu_;
  bool closed_ = false;
  uint64_t last_version_ = 0;
};

struct ModelState {
  explicit ModelState(std::string name) : name(std::move(name)) {}
  const std::string name;
  std::atomic<uint64_t> latest{0};  // newest version seen
  prometheus::Gauge* version_gauge = nullptr;
  absl::Mutex mu;
  std::map<uint64_t, std::shared_ptr<Subscriber>> subscribers;  // by id
  std::thread watcher;
};

}  // namespace

struct Router::Impl {
  explicit Impl(RouterOptions o)
      : options(std::move(o)),
        own_metrics(options.metrics ? nullptr : std::make_unique<prometheus::Registry>()),
        metrics(options.metrics ? options.metrics : own_metrics.get()),
        solve_seconds(prometheus::BuildHistogram()
                          .Name("moend_router_solve_seconds")
                          .Help("Time to solve a plan on a cache miss, seconds")
                          .Register(*metrics)),
        cache_hits(prometheus::BuildCounter()
                       .Name("moend_router_plan_cache_hits_total")
                       .Help("Plan requests answered from the plan cache")
                       .Register(*metrics)
                       .Add({})),
        cache_misses(prometheus::BuildCounter()
                         .Name("moend_router_plan_cache_misses_total")
                         .Help("Plan requests that had to solve")
                         .Register(*metrics)
                         .Add({})),
        cache_entries(prometheus::BuildGauge()
                          .Name("moend_router_plan_cache_entries")
                          .Help("Entries in the plan cache")
                          .Register(*metrics)
                          .Add({})),
        watch_streams(prometheus::BuildGauge()
                          .Name("moend_router_watch_streams")
                          .Help("Open plan subscriptions (WatchPlans streams)")
                          .Register(*metrics)
                          .Add({})),
        plan_version(prometheus::BuildGauge()
                         .Name("moend_router_plan_version")
                         .Help("Newest table version the router has seen, per model")
                         .Register(*metrics)),
        skipped_plans(prometheus::BuildCounter()
                          .Name("moend_router_watch_skipped_plans_total")
                          .Help("New table versions not pushed to a subscriber because its "
                                "budget could not be solved on them")
                          .Register(*metrics)
                          .Add({})),
        source_errors(prometheus::BuildCounter()
                          .Name("moend_router_table_source_errors_total")
                          .Help("Failed change-feed or table calls of the watchers")
                          .Register(*metrics)
                          .Add({})),
        plans(options.plan_cache_entries),
        tables(options.table_cache_entries) {
    if (!options.clock) options.clock = [] { return absl::Now(); };
  }

  absl::Time Now() const { return options.clock(); }

  prometheus::Histogram& SolveHistogram(SolverKind kind) {
    static const prometheus::Histogram::BucketBoundaries kBuckets = {
        1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1, 3, 10};
    return solve_seconds.Add({{"solver", SolverName(kind)}}, kBuckets);
  }

  absl::StatusOr<std::shared_ptr<const registry::VersionedTable>> Table(const std::string& model,
                                                                        uint64_t version) {
    const TableKey key{model, version};
    {
      absl::MutexLock lock(&tables_mu);
      if (const auto* hit = tables.Get(key)) return *hit;
    }
    MOEND_ASSIGN_OR_RETURN(registry::VersionedTable table,
                           options.tables->GetTable(model, version));
    auto shared = std::make_shared<const registry::VersionedTable>(std::move(table));
    absl::MutexLock lock(&tables_mu);
    tables.Put({model, shared->version}, shared);
    return shared;
  }

  static PlanKey KeyOf(const std::string& model, uint64_t version, const Query& q) {
    return {model, version, q.budget.kind, q.budget.ratio, q.budget.bytes, q.budget.context,
            q.solver, q.units};
  }

  // The cached plan (or solver error) for `key`, counted as a hit; nullopt
  // on a miss (not counted: the solve that follows counts it).
  std::optional<absl::StatusOr<PlanPtr>> CachedPlan(const PlanKey& key) {
    absl::MutexLock lock(&plans_mu);
    const auto* hit = plans.Get(key);
    if (hit == nullptr) return std::nullopt;
    cache_hits.Increment();
    return *hit;
  }

  bool IsCached(const PlanKey& key) {
    absl::MutexLock lock(&plans_mu);
    return plans.Get(key) != nullptr;
  }

  // The plan for (model, version, query). `*transient` is set when the error
  // came from the table source (worth retrying) rather than the solver.
  absl::StatusOr<PlanPtr> PlanFor(const std::string& model, uint64_t version, const Query& q,
                               bool* transient = nullptr) {
    if (transient) *transient = false;
    const PlanKey key = KeyOf(model, version, q);
    if (auto hit = CachedPlan(key)) return *std::move(hit);
    cache_misses.Increment();
    absl::StatusOr<std::shared_ptr<const registry::VersionedTable>> table = Table(model, version);
    if (!table.ok()) {
      if (transient) *transient = true;
      return table.status();
    }
    const absl::Time start = absl::Now();
    absl::StatusOr<moend::Plan> solved = Solve((*table)->table, q.budget, q.solver, q.units);
    SolveHistogram(q.solver).Observe(absl::ToDoubleSeconds(absl::Now() - start));
    absl::StatusOr<PlanPtr> outcome;
    if (solved.ok()) {
      solved->model = model;
      auto plan = std::make_shared<VersionedPlan>();
      plan->table_version = (*table)->version;
      plan->num_kv_heads = (*table)->table.num_kv_heads;
      plan->head_dim = (*table)->table.head_dim;
      plan->created = Now();
      plan->plan = *std::move(solved);
      outcome = PlanPtr(std::move(plan));
    } else {
      outcome = solved.status();
    }
    absl::MutexLock lock(&plans_mu);
    plans.Put(key, outcome);
    cache_entries.Set(static_cast<double>(plans.size()));
    return outcome;
  }

  // Runs `task` on a solve thread; false when max_waiting_solves wait.
  bool PostSolve(absl::AnyInvocable<void() &&> task) { return solves->Post(std::move(task)); }
  absl::Status SolvesFull() const {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the router already has ", options.max_waiting_solves,
        " plans to solve waiting (cold cache under load); retry shortly or use another router"));
  }

  absl::Status Closing() const {
    return absl::UnavailableError("the router is shutting down; ask another router");
  }

  std::shared_ptr<ModelState> FindModel(const std::string& model) {
    absl::ReaderMutexLock lock(&models_mu);
    auto it = models.find(model);
    return it == models.end() ? nullptr : it->second;
  }

  // The model's state, created (with its watcher) on first use; that first
  // use reads the latest table, which also tells whether the model exists.
  absl::StatusOr<std::shared_ptr<ModelState>> Model(const std::string& model) {
    if (auto state = FindModel(model)) return state;
    MOEND_ASSIGN_OR_RETURN(std::shared_ptr<const registry::VersionedTable> table, Table(model, 0));
    absl::MutexLock lock(&models_mu);
    auto& slot = models[model];
    if (slot == nullptr) {
      slot = std::make_shared<ModelState>(model);
      slot->latest = table->version;
      slot->version_gauge = &plan_version.Add({{"model", model}});
      slot->version_gauge->Set(static_cast<double>(table->version));
      if (!stopping) {
        slot->watcher = std::thread([this, state = slot.get()] { Watch(state); });
      }
    }
    return slot;
  }

  bool SleepUnlessStopping(absl::Duration d) {
    absl::MutexLock lock(&models_mu);
    models_mu.AwaitWithTimeout(absl::Condition(&stopping), d);
    return !stopping;
  }
  bool Stopping() {
    absl::ReaderMutexLock lock(&models_mu);
    return stopping;
  }

  // The watcher of one model: long-polls the change feed and fans each new
  // version out to the model's subscribers.
  void Watch(ModelState* state) {
    uint64_t after = state->latest;
    absl::Duration backoff = options.backoff_initial;
    auto fail = [&] {
      source_errors.Increment();
      if (!SleepUnlessStopping(backoff)) return;
      backoff = std::min(backoff * 2, options.backoff_max);
    };
    while (!Stopping()) {
      absl::StatusOr<uint64_t> version =
          options.tables->WaitForVersion(state->name, after, options.watch_poll);
      if (!version.ok()) {
        if (!absl::IsDeadlineExceeded(version.status())) fail();
        continue;
      }
      if (*version <= after) continue;  // not expected from a correct source
      uint64_t seen = state->latest.load();
      while (seen < *version && !state->latest.compare_exchange_weak(seen, *version)) {
      }
      state->version_gauge->Set(static_cast<double>(state->latest.load()));
      std::vector<std::shared_ptr<Subscriber>> subscribers;
      {
        absl::MutexLock lock(&state->mu);
        for (const auto& [id, s] : state->subscribers) subscribers.push_back(s);
      }
      bool retry = false;
      for (const auto& s : subscribers) {
        bool transient = false;
        absl::StatusOr<PlanPtr> plan = PlanFor(state->name, *version, s->query(), &transient);
        if (plan.ok()) {
          s->Offer(*plan);
        } else if (transient) {
          retry = true;  // the table could not be read: try this version again
        } else {
          skipped_plans.Increment();
        }
      }
      if (retry) {
        fail();
        continue;
      }
      after = *version;
      backoff = options.backoff_initial;
    }
  }

  RouterOptions options;
  std::unique_ptr<prometheus::Registry> own_metrics;
  prometheus::Registry* metrics;
  prometheus::Family<prometheus::Histogram>& solve_seconds;
  prometheus::Counter& cache_hits;
  prometheus::Counter& cache_misses;
  prometheus::Gauge& cache_entries;
  prometheus::Gauge& watch_streams;
  prometheus::Family<prometheus::Gauge>& plan_version;
  prometheus::Counter& skipped_plans;
  prometheus::Counter& source_errors;

  absl::Mutex plans_mu;
  LruCache<PlanKey, absl::StatusOr<PlanPtr>> plans;
  absl::Mutex tables_mu;
  LruCache<TableKey, std::shared_ptr<const registry::VersionedTable>> tables;

  absl::Mutex models_mu;
  bool stopping = false;
  absl::flat_hash_map<std::string, std::shared_ptr<ModelState>> models;
  std::atomic<uint64_t> next_subscriber_id{1};
  // Set by ~Router: the solves still waiting answer Closing() instead.
  std::atomic<bool> closing{false};
  // Reset first by ~Router, which runs the solves still waiting.
  std::unique_ptr<WorkQueue> solves =
      std::make_unique<WorkQueue>(options.solve_threads, options.max_waiting_solves);
};

namespace {

class SubscriptionImpl final : public PlanSubscription {
 public:
  SubscriptionImpl(std::shared_ptr<ModelState> state, uint64_t id,
                   std::shared_ptr<Subscriber> subscriber, prometheus::Gauge* streams)
      : state_(std::move(state)), id_(id), subscriber_(std::move(subscriber)), streams_(streams) {
    streams_->Increment();
  }
  ~SubscriptionImpl() override {
    {
      absl::MutexLock lock(&state_->mu);
      state_->subscribers.erase(id_);
    }
    subscriber_->Close();  // waits for a callback in flight
    streams_->Decrement();
  }

 private:
  std::shared_ptr<ModelState> state_;
  const uint64_t id_;
  std::shared_ptr<Subscriber> subscriber_;
  prometheus::Gauge* streams_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Router>> Router::Create(RouterOptions options) {
  if (options.tables == nullptr) {
    return absl::InvalidArgumentError("RouterOptions.tables is required");
  }
  if (options.plan_cache_entries < 1 || options.table_cache_entries < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cache sizes must be >= 1 entry; got plan_cache_entries ", options.plan_cache_entries,
        ", table_cache_entries ", options.table_cache_entries));
  }
  if (options.solve_threads < 1 || options.solve_threads > 1024 || options.max_waiting_solves < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "solve_threads must be in [1, 1024] and max_waiting_solves >= 1; got solve_threads ",
        options.solve_threads, ", max_waiting_solves ", options.max_waiting_solves));
  }
  if (options.watch_poll <= absl::ZeroDuration() ||
      options.backoff_initial <= absl::ZeroDuration() ||
      options.backoff_max < options.backoff_initial) {
    return absl::InvalidArgumentError(
        "watch_poll and backoff_initial must be > 0 and backoff_max >= backoff_initial");
  }
  return std::unique_ptr<Router>(new Router(std::make_unique<Impl>(std::move(options))));
}

Router::Router(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Router::~Router() {
  Shutdown();
  impl_->closing = true;
  impl_->solves.reset();  // waits for the solves running; the waiting ones answer Closing()
}

void Router::Shutdown() {
  std::vector<std::shared_ptr<ModelState>> states;
  {
    absl::MutexLock lock(&impl_->models_mu);
    impl_->stopping = true;
    for (auto& [name, state] : impl_->models) states.push_back(state);
  }
  for (auto& state : states) {
    if (state->watcher.joinable()) state->watcher.join();
  }
}

size_t Router::plan_cache_size() const {
  absl::MutexLock lock(&impl_->plans_mu);
  return impl_->plans.size();
}

absl::StatusOr<PlanPtr> Router::SolvePlan(const PlanRequest& request) {
  MOEND_ASSIGN_OR_RETURN(
      Query query, Validate(request.model, request.budget, request.solver, request.units));
  uint64_t version = request.table_version;
  if (version == 0) {
    MOEND_ASSIGN_OR_RETURN(std::shared_ptr<ModelState> state, impl_->Model(request.model));
    version = state->latest.load();
  }
  return impl_->PlanFor(request.model, version, query);
}

void Router::SolvePlanAsync(const PlanRequest& request, PlanDone done) {
  absl::StatusOr<Query> query =
      Validate(request.model, request.budget, request.solver, request.units);
  if (!query.ok()) return std::move(done)(query.status());
  // A warm request: the version is known without the table source.
  uint64_t version = request.table_version;
  if (version == 0) {
    if (std::shared_ptr<ModelState> state = impl_->FindModel(request.model)) {
      version = state->latest.load();
    }
  }
  if (version != 0) {
    if (auto hit = impl_->CachedPlan(Impl::KeyOf(request.model, version, *query))) {
      return std::move(done)(*std::move(hit));
    }
  }
  auto shared = std::make_shared<PlanDone>(std::move(done));
  auto task = [this, request, shared] {
    std::move(*shared)(impl_->closing ? impl_->Closing() : SolvePlan(request));
  };
  if (!impl_->PostSolve(std::move(task))) {
    std::move(*shared)(impl_->SolvesFull());
  }
}

void Router::WatchPlansAsync(const WatchRequest& request, PlanCallback on_plan, WatchDone done) {
  absl::StatusOr<Query> query =
      Validate(request.model, request.budget, request.solver, request.units);
  if (!query.ok()) return std::move(done)(query.status());
  if (std::shared_ptr<ModelState> state = impl_->FindModel(request.model)) {
    if (impl_->IsCached(Impl::KeyOf(request.model, state->latest.load(), *query))) {
      return std::move(done)(WatchPlans(request, std::move(on_plan)));
    }
  }
  auto shared = std::make_shared<WatchDone>(std::move(done));
  auto task = [this, request, on_plan = std::move(on_plan), shared]() mutable {
    if (impl_->closing) return std::move(*shared)(impl_->Closing());
    std::move(*shared)(WatchPlans(request, std::move(on_plan)));
  };
  if (!impl_->PostSolve(std::move(task))) std::move(*shared)(impl_->SolvesFull());
}

absl::StatusOr<std::unique_ptr<PlanSubscription>> Router::WatchPlans(const WatchRequest& request,
                                                                     PlanCallback on_plan) {
  MOEND_ASSIGN_OR_RETURN(
      Query query, Validate(request.model, request.budget, request.solver, request.units));
  MOEND_ASSIGN_OR_RETURN(std::shared_ptr<ModelState> state, impl_->Model(request.model));
  auto subscriber = std::make_shared<Subscriber>(query, std::move(on_plan));
  const uint64_t id = impl_->next_subscriber_id++;
  uint64_t version;
  {
    // Registered before the current version is read: a version that lands
    // from here on reaches this subscriber through the watcher, and Offer
    // drops whichever of the two plans is older.
    absl::MutexLock lock(&state->mu);
    state->subscribers.emplace(id, subscriber);
    version = state->latest.load();
  }
  auto subscription =
      std::make_unique<SubscriptionImpl>(state, id, subscriber, &impl_->watch_streams);
  MOEND_ASSIGN_OR_RETURN(PlanPtr plan, impl_->PlanFor(request.model, version, query));
  subscriber->Offer(plan);
  return subscription;
}

}  // namespace moend::router


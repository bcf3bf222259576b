// Router without a network, over a fake table source: solving, the plan
// cache, request validation, the watchers' fan-out of new versions, and the
// metrics.
#include "services/router/router.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "core/solver.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "services/router/lru_cache.h"
#include "tests/router/router_test_util.h"
#include "tests/util/wait.h"

namespace moend::router {
namespace {

using ::testing::HasSubstr;
using testing::FakeTableSource;
using testing::MakeHeadTable;
using testing::MakeTable;

// Failure guard for waits in tests; not a timing goal.
constexpr absl::Duration kPatience = absl::Seconds(30);

// The value of a metric (summed over label sets matching `label`).
double Metric(prometheus::Registry& registry, const std::string& name,
              const std::string& label_value = "") {
  double sum = 0;
  for (const auto& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const auto& m : family.metric) {
      bool match = label_value.empty();
      for (const auto& l : m.label) match = match || l.value == label_value;
      if (!match) continue;
      sum += family.type == prometheus::MetricType::Counter ? m.counter.value
             : family.type == prometheus::MetricType::Gauge
                 ? m.gauge.value
                 : static_cast<double>(m.histogram.sample_count);
    }
  }
  return sum;
}

// Collects the plans of a subscription.
class PlanSink {
 public:
  Router::PlanCallback Callback() {
    return [this](PlanPtr p) {
      absl::MutexLock lock(&mu_);
      plans_.push_back(std::move(p));
    };
  }
  // The first plan with version >= v, or nullptr after kPatience.
  PlanPtr WaitFor(uint64_t v) {
    absl::MutexLock lock(&mu_);
    auto has = [&] { return !plans_.empty() && plans_.back()->table_version >= v; };
    mu_.AwaitWithTimeout(absl::Condition(&has), kPatience);
    for (const auto& p : plans_) {
      if (p->table_version >= v) return p;
    }
    return nullptr;
  }
  std::vector<uint64_t> versions() {
    absl::MutexLock lock(&mu_);
    std::vector<uint64_t> out;
    for (const auto& p : plans_) out.push_back(p->table_version);
    return out;
  }

 private:
  absl::Mutex mu_;
  std::vector<PlanPtr> plans_;
};

class RouterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    source_.Publish(MakeTable("tiny", 1));
    auto router = Router::Create({.tables = &source_,
                                  .metrics = &metrics_,
                                  .plan_cache_entries = 64,
                                  .watch_poll = absl::Milliseconds(50),
                                  .backoff_initial = absl::Milliseconds(1),
                                  .backoff_max = absl::Milliseconds(5),
                                  .clock = [] { return absl::FromUnixSeconds(1'800'000'000); }});
    ASSERT_TRUE(router.ok()) << router.status();
    router_ = std::move(router).value();
  }
  void TearDown() override {
    if (router_) router_->Shutdown();
  }

  FakeTableSource source_;
  prometheus::Registry metrics_;
  std::unique_ptr<Router> router_;
};

TEST_F(RouterTest, SolvesTheLatestTableWithTheAskedSolver) {
  for (const char* solver : {"greedy", "exact", "1d", "2d_uniform", "2d"}) {
    auto plan =
        router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(1.8), .solver = solver});
    ASSERT_TRUE(plan.ok()) << solver << ": " << plan.status();
    auto kind = ParseSolverKind(solver);
    ASSERT_TRUE(kind.ok());
    auto expected = Solve(MakeTable("tiny", 1), Budget::Ratio(1.8), *kind);
    ASSERT_TRUE(expected.ok()) << expected.status();
    expected->model = "tiny";
    EXPECT_EQ((*plan)->plan, *expected) << solver;
    EXPECT_EQ((*plan)->table_version, 1u);
    EXPECT_EQ((*plan)->num_kv_heads, 2);
    EXPECT_EQ((*plan)->head_dim, 64);
    EXPECT_EQ((*plan)->created, absl::FromUnixSeconds(1'800'000'000));
  }
  // An empty solver means exact (the knapsack optimum; docs/DESIGN.md section 4).
  auto plan = router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(4)});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ((*plan)->plan.solver, "exact");
}

TEST_F(RouterTest, SecondCallIsACacheHitWithoutTouchingTheSource) {
  const PlanRequest request{.model = "tiny", .budget = Budget::Ratio(6), .solver = "exact"};
  auto first = router_->SolvePlan(request);
  ASSERT_TRUE(first.ok()) << first.status();
  const int calls = source_.get_table_calls();
  EXPECT_EQ(Metric(metrics_, "moend_router_plan_cache_misses_total"), 1);
  EXPECT_EQ(Metric(metrics_, "moend_router_plan_cache_hits_total"), 0);
  EXPECT_EQ(Metric(metrics_, "moend_router_solve_seconds", "exact"), 1);

  auto second = router_->SolvePlan(request);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(first->get(), second->get());  // the same cached object
  EXPECT_EQ(source_.get_table_calls(), calls);
  EXPECT_EQ(Metric(metrics_, "moend_router_plan_cache_hits_total"), 1);
  EXPECT_EQ(Metric(metrics_, "moend_router_solve_seconds", "exact"), 1);

  // Other budgets, budget forms and solvers are other keys.
  ASSERT_TRUE(router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(7), .solver = "exact"}).ok());
  ASSERT_TRUE(router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(6), .solver = "greedy"}).ok());
  ASSERT_TRUE(router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(6, 2048), .solver = "exact"}).ok());
  EXPECT_EQ(Metric(metrics_, "moend_router_plan_cache_misses_total"), 4);
  EXPECT_EQ(router_->plan_cache_size(), 4u);
  EXPECT_EQ(Metric(metrics_, "moend_router_plan_cache_entries"), 4);
}

TEST_F(RouterTest, SolvesPerHeadForATableWithHeadRowsAndPerLayerWithout) {
  ASSERT_EQ(source_.Publish(MakeHeadTable("heads", 1)), 1u);
  for (const char* solver : {"greedy", "exact"}) {
    auto kind = ParseSolverKind(solver);
    ASSERT_TRUE(kind.ok());
    // Default units (auto): per head.
    auto plan = router_->SolvePlan({.model = "heads", .budget = Budget::Ratio(4), .solver = solver});
    ASSERT_TRUE(plan.ok()) << solver << ": " << plan.status();
    EXPECT_EQ((*plan)->plan.HeadsPerLayer(), 2) << solver;
    auto expected = Solve(MakeHeadTable("heads", 1), Budget::Ratio(4), *kind, SolveUnits::kHead);
    ASSERT_TRUE(expected.ok()) << expected.status();
    expected->model = "heads";
    EXPECT_EQ((*plan)->plan, *expected) << solver;
    // The heads of some layer differ (head 0 is the less sensitive one).
    bool differ = false;
    for (const PlanLayer& l : (*plan)->plan.layers) {
      differ = differ || !(l.heads[0].tuple == l.heads[1].tuple);
    }
    EXPECT_TRUE(differ) << solver;
    EXPECT_EQ((*plan)->plan.RuntimeTuples().size(), 24u);

    // units "layer" forces per layer, and is another cache entry.
    auto layer = router_->SolvePlan(
        {.model = "heads", .budget = Budget::Ratio(4), .solver = solver, .units = "layer"});
    ASSERT_TRUE(layer.ok()) << layer.status();
    EXPECT_EQ((*layer)->plan.HeadsPerLayer(), 0) << solver;
    auto per_layer = Solve(MakeHeadTable("heads", 1), Budget::Ratio(4), *kind, SolveUnits::kLayer);
    ASSERT_TRUE(per_layer.ok()) << per_layer.status();
    per_layer->model = "heads";
    EXPECT_EQ((*layer)->plan, *per_layer) << solver;
    // "head" is what auto chose: the same plan, another key.
    auto head = router_->SolvePlan(
        {.model = "heads", .budget = Budget::Ratio(4), .solver = solver, .units = "head"});
    ASSERT_TRUE(head.ok()) << head.status();
    EXPECT_EQ((*head)->plan, (*plan)->plan);
  }
  EXPECT_EQ(router_->plan_cache_size(), 6u);

  // A table without s_head (model "tiny") is solved per layer, and cannot be
  // solved per head.
  auto tiny = router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(4)});
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  EXPECT_EQ((*tiny)->plan.HeadsPerLayer(), 0);
  EXPECT_EQ((*tiny)->plan.RuntimeTuples().size(), 12u);
  auto tiny_head = router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(4), .units = "head"});
  EXPECT_EQ(tiny_head.status().code(), absl::StatusCode::kInvalidArgument) << tiny_head.status();
  auto bad = router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(4), .units = "heads"});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("layer"));
}

TEST_F(RouterTest, WatchOfAPerHeadTableGetsPerHeadPlans) {
  ASSERT_EQ(source_.Publish(MakeHeadTable("heads", 1)), 1u);
  PlanSink sink;
  auto sub = router_->WatchPlans({.model = "heads", .budget = Budget::Ratio(6), .solver = "greedy"},
                                 sink.Callback());
  ASSERT_TRUE(sub.ok()) << sub.status();
  PlanPtr first = sink.WaitFor(1);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->plan.HeadsPerLayer(), 2);
  ASSERT_EQ(source_.Publish(MakeHeadTable("heads", 2)), 2u);
  PlanPtr second = sink.WaitFor(2);
  ASSERT_NE(second, nullptr);
  auto expected = Solve(MakeHeadTable("heads", 2), Budget::Ratio(6), SolverKind::kGreedy);
  ASSERT_TRUE(expected.ok()) << expected.status();
  expected->model = "heads";
  EXPECT_EQ(second->plan, *expected);
  EXPECT_EQ(second->plan.HeadsPerLayer(), 2);
}

TEST_F(RouterTest, CacheKeyIncludesTheTableVersion) {
  ASSERT_EQ(source_.Publish(MakeTable("tiny", 2)), 2u);
  auto v1 = router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(5), .solver = "exact",
                                .table_version = 1});
  auto v2 = router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(5), .solver = "exact",
                                .table_version = 2});
  ASSERT_TRUE(v1.ok()) << v1.status();
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ((*v1)->table_version, 1u);
  EXPECT_EQ((*v2)->table_version, 2u);
  EXPECT_EQ(Metric(metrics_, "moend_router_plan_cache_misses_total"), 2);
  auto expected2 = Solve(MakeTable("tiny", 2), Budget::Ratio(5), SolverKind::kExact);
  ASSERT_TRUE(expected2.ok());
  EXPECT_EQ((*v2)->plan.layers, expected2->layers);
  EXPECT_NE((*v1)->plan.predicted_error, (*v2)->plan.predicted_error);
}

TEST_F(RouterTest, LatestFollowsTheChangeFeed) {
  PlanSink sink;
  auto sub = router_->WatchPlans({.model = "tiny", .budget = Budget::Ratio(4)}, sink.Callback());
  ASSERT_TRUE(sub.ok()) << sub.status();
  source_.Publish(MakeTable("tiny", 2));
  ASSERT_NE(sink.WaitFor(2), nullptr);  // the watcher has seen version 2
  auto latest = router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(9)});
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ((*latest)->table_version, 2u);
  EXPECT_EQ(Metric(metrics_, "moend_router_plan_version", "tiny"), 2);
}

TEST_F(RouterTest, LruEvictsTheLeastRecentlyUsedPlan) {
  auto router = Router::Create({.tables = &source_, .plan_cache_entries = 2});
  ASSERT_TRUE(router.ok());
  auto solve = [&](double ratio) {
    return (*router)->SolvePlan({.model = "tiny", .budget = Budget::Ratio(ratio)});
  };
  auto a = solve(2);
  auto b = solve(3);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(solve(2)->get(), a->get());  // a is now the most recent
  ASSERT_TRUE(solve(4).ok());            // evicts b
  EXPECT_EQ((*router)->plan_cache_size(), 2u);
  EXPECT_EQ(solve(2)->get(), a->get());
  auto b_again = solve(3);
  ASSERT_TRUE(b_again.ok());
  EXPECT_NE(b_again->get(), b->get());  // solved again
  EXPECT_EQ((*b_again)->plan, (*b)->plan);
}

TEST(LruCacheTest, BoundedAndOrderedByUse) {
  LruCache<int, std::string> cache(2);
  cache.Put(1, "a");
  cache.Put(2, "b");
  ASSERT_NE(cache.Get(1), nullptr);
  cache.Put(3, "c");
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.Get(2), nullptr);
  EXPECT_EQ(*cache.Get(1), "a");
  cache.Put(1, "a2");
  EXPECT_EQ(*cache.Get(1), "a2");
  EXPECT_EQ(*cache.Get(3), "c");
}

TEST_F(RouterTest, RejectsInvalidRequestsSayingWhatIsAllowed) {
  struct Case {
    PlanRequest request;
    absl::StatusCode code;
    std::string message;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<Case> cases = {
      {{.model = "", .budget = Budget::Ratio(4)}, absl::StatusCode::kInvalidArgument,
       "model is required"},
      {{.model = "nope", .budget = Budget::Ratio(4)}, absl::StatusCode::kNotFound,
       "model 'nope' is not registered"},
      {{.model = "tiny", .budget = Budget::Ratio(0)}, absl::StatusCode::kInvalidArgument,
       "finite number >= 1"},
      {{.model = "tiny", .budget = Budget::Ratio(-3)}, absl::StatusCode::kInvalidArgument,
       "finite number >= 1"},
      {{.model = "tiny", .budget = Budget::Ratio(nan)}, absl::StatusCode::kInvalidArgument,
       "finite number >= 1"},
      {{.model = "tiny", .budget = Budget::Ratio(inf)}, absl::StatusCode::kInvalidArgument,
       "finite number >= 1"},
      {{.model = "tiny", .budget = Budget::Bytes(0, 4096)}, absl::StatusCode::kInvalidArgument,
       "must be > 0"},
      {{.model = "tiny", .budget = Budget::Bytes(-5, 4096)}, absl::StatusCode::kInvalidArgument,
       "must be > 0"},
      {{.model = "tiny", .budget = Budget::Bytes(100000, 0)}, absl::StatusCode::kInvalidArgument,
       "needs a context > 0"},
      {{.model = "tiny", .budget = Budget::Ratio(4), .solver = "fancy"},
       absl::StatusCode::kInvalidArgument, "2d_uniform"},
      {{.model = "tiny", .budget = Budget::Ratio(4), .table_version = 9},
       absl::StatusCode::kNotFound, "the latest is 1"},
      // Infeasible: names the smallest feasible budget.
      {{.model = "tiny", .budget = Budget::Ratio(1000), .solver = "greedy"},
       absl::StatusCode::kResourceExhausted, "smallest feasible"},
  };
  for (const Case& c : cases) {
    auto plan = router_->SolvePlan(c.request);
    ASSERT_FALSE(plan.ok()) << c.message;
    EXPECT_EQ(plan.status().code(), c.code) << plan.status();
    EXPECT_THAT(std::string(plan.status().message()), HasSubstr(c.message));
    // WatchPlans validates the same way and subscribes nothing.
    if (c.request.table_version == 0) {
      PlanSink sink;
      auto sub = router_->WatchPlans(
          {.model = c.request.model, .budget = c.request.budget, .solver = c.request.solver},
          sink.Callback());
      ASSERT_FALSE(sub.ok()) << c.message;
      EXPECT_EQ(sub.status().code(), c.code) << sub.status();
      EXPECT_TRUE(sink.versions().empty());
    }
  }
  auto unknown = router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(4), .solver = "x"});
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("greedy"));
  EXPECT_EQ(Metric(metrics_, "moend_router_watch_streams"), 0);
}

TEST_F(RouterTest, WatchGetsTheCurrentPlanThenEachNewVersion) {
  PlanSink sink;
  auto sub = router_->WatchPlans({.model = "tiny", .budget = Budget::Ratio(5), .solver = "exact"},
                                 sink.Callback());
  ASSERT_TRUE(sub.ok()) << sub.status();
  EXPECT_EQ(sink.versions(), std::vector<uint64_t>{1});  // before WatchPlans returned
  EXPECT_EQ(Metric(metrics_, "moend_router_watch_streams"), 1);

  source_.Publish(MakeTable("tiny", 2));
  PlanPtr v2 = sink.WaitFor(2);
  ASSERT_NE(v2, nullptr);
  auto expected = Solve(MakeTable("tiny", 2), Budget::Ratio(5), SolverKind::kExact);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(v2->plan.layers, expected->layers);
  EXPECT_EQ(v2->table_version, 2u);

  source_.Publish(MakeTable("tiny", 3));
  ASSERT_NE(sink.WaitFor(3), nullptr);
  EXPECT_EQ(sink.versions(), (std::vector<uint64_t>{1, 2, 3}));
  sub->reset();
  EXPECT_EQ(Metric(metrics_, "moend_router_watch_streams"), 0);
}

TEST_F(RouterTest, NewVersionFansOutToEverySubscriberAndStopsAtUnsubscribe) {
  PlanSink a, b, c, gone;
  auto sa = router_->WatchPlans({.model = "tiny", .budget = Budget::Ratio(4)}, a.Callback());
  auto sb = router_->WatchPlans({.model = "tiny", .budget = Budget::Ratio(4)}, b.Callback());
  auto sc = router_->WatchPlans({.model = "tiny", .budget = Budget::Ratio(1.5), .solver = "1d"},
                                c.Callback());
  auto sg = router_->WatchPlans({.model = "tiny", .budget = Budget::Ratio(4)}, gone.Callback());
  ASSERT_TRUE(sa.ok() && sb.ok() && sc.ok() && sg.ok());
  EXPECT_EQ(Metric(metrics_, "moend_router_watch_streams"), 4);
  sg->reset();  // unsubscribed before the new version lands

  source_.Publish(MakeTable("tiny", 2));
  PlanPtr pa = a.WaitFor(2), pb = b.WaitFor(2), pc = c.WaitFor(2);
  ASSERT_TRUE(pa && pb && pc);
  EXPECT_EQ(pa.get(), pb.get());  // one solve for equal (budget, solver)
  EXPECT_EQ(pc->plan.solver, "1d");
  EXPECT_EQ(gone.versions(), std::vector<uint64_t>{1});
  EXPECT_EQ(Metric(metrics_, "moend_router_watch_streams"), 3);
}

TEST_F(RouterTest, InfeasibleNewVersionIsSkippedAndTheNextOneDelivered) {
  // Ratio 3.5 fits table 1; a table without cheap tuples cannot reach it.
  PlanSink sink;
  auto sub = router_->WatchPlans({.model = "tiny", .budget = Budget::Ratio(3.5)}, sink.Callback());
  ASSERT_TRUE(sub.ok()) << sub.status();
  SensitivityTable expensive = MakeTable("tiny", 2);
  expensive.tuples.resize(1);  // (1,16,16) only
  for (auto& row : expensive.s) row.resize(1);
  ASSERT_FALSE(Solve(expensive, Budget::Ratio(3.5), SolverKind::kGreedy).ok());
  source_.Publish(expensive);
  source_.Publish(MakeTable("tiny", 3));
  ASSERT_NE(sink.WaitFor(3), nullptr);
  EXPECT_EQ(sink.versions(), (std::vector<uint64_t>{1, 3}));
  EXPECT_EQ(Metric(metrics_, "moend_router_watch_skipped_plans_total"), 1);
}

TEST_F(RouterTest, WatcherRetriesAfterSourceErrors) {
  PlanSink sink;
  auto sub = router_->WatchPlans({.model = "tiny", .budget = Budget::Ratio(4)}, sink.Callback());
  ASSERT_TRUE(sub.ok()) << sub.status();
  source_.FailNextWaits(3);
  source_.SetGetTableDown(true);
  source_.Publish(MakeTable("tiny", 2));
  // The watcher sees version 2 once the feed is back but cannot read the
  // table; it must keep trying until the table is readable.
  ASSERT_TRUE(moend::testing::WaitUntil([&] { return source_.failed_waits() >= 3; },
                                        kPatience))
      << "the watcher stopped waiting on the feed after " << source_.failed_waits() << " errors";
  const int calls = source_.get_table_calls();
  ASSERT_TRUE(moend::testing::WaitUntil([&] { return source_.get_table_calls() >= calls + 2; },
                                        kPatience))
      << "the watcher stopped retrying the table read";
  EXPECT_EQ(sink.versions(), std::vector<uint64_t>{1});
  source_.SetGetTableDown(false);
  ASSERT_NE(sink.WaitFor(2), nullptr);
  EXPECT_GE(Metric(metrics_, "moend_router_table_source_errors_total"), 5);
}

TEST_F(RouterTest, CachedTablesAndPlansServeWhileTheSourceIsDown) {
  auto first = router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(4)});
  ASSERT_TRUE(first.ok());
  source_.Publish(MakeTable("tiny", 2));
  source_.SetGetTableDown(true);
  const int calls = source_.get_table_calls();
  auto cached = router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(4),
                                    .table_version = 1});
  ASSERT_TRUE(cached.ok()) << cached.status();
  EXPECT_EQ(cached->get(), first->get());
  // A new budget on a table in memory needs no source either.
  auto other = router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(5),
                                   .table_version = 1});
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(source_.get_table_calls(), calls);
  // A table not in memory does.
  auto uncached = router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(5),
                                      .table_version = 2});
  EXPECT_EQ(uncached.status().code(), absl::StatusCode::kUnavailable) << uncached.status();
  // The failure is not cached: it solves once the source is back.
  source_.SetGetTableDown(false);
  auto later = router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(5),
                                   .table_version = 2});
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_EQ((*later)->table_version, 2u);
}

TEST(RouterCreateTest, RejectsBadOptions) {
  EXPECT_EQ(Router::Create({}).status().code(), absl::StatusCode::kInvalidArgument);
  FakeTableSource source;
  EXPECT_EQ(Router::Create({.tables = &source, .plan_cache_entries = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Router::Create({.tables = &source, .backoff_initial = absl::Seconds(2),
                            .backoff_max = absl::Seconds(1)})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moend::router

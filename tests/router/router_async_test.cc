// Cache misses off the caller's thread: Router::SolvePlanAsync and
// WatchPlansAsync answer a warm request before returning and hand a cold
// one (table-source call and solve) to the router's solve threads, with a
// bound on the misses waiting; over gRPC, a warm SolvePlan completes while
// cold ones are stuck in the table source.
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "moend/v1/router.grpc.pb.h"
#include "services/router/router.h"
#include "services/router/router_service.h"
#include "tests/router/router_test_util.h"

namespace moend::router {
namespace {

using testing::MakeTable;

// How long a test waits for something that must happen before it fails.
constexpr absl::Duration kPatience = absl::Seconds(30);

// Tables of model "tiny" (latest version 1, any version asked for exists);
// while closed, GetTable blocks until opened, as a registry that does not
// answer.
class GateTableSource final : public TableSource {
 public:
  absl::StatusOr<registry::VersionedTable> GetTable(const std::string& model,
                                                    uint64_t version) override {
    absl::MutexLock lock(&mu_);
    ++blocked_;
    mu_.Await(absl::Condition(&open_));
    --blocked_;
    if (model != "tiny") return absl::NotFoundError("model '" + model + "' is not registered");
    return registry::VersionedTable{version == 0 ? 1 : version, "run", MakeTable("tiny", 1)};
  }
  absl::StatusOr<uint64_t> WaitForVersion(const std::string&, uint64_t,
                                          absl::Duration timeout) override {
    absl::SleepFor(std::min(timeout, absl::Milliseconds(50)));
    return absl::DeadlineExceededError("no new version");
  }
  void SetOpen(bool open) {
    absl::MutexLock lock(&mu_);
    open_ = open;
  }
  // Waits until `n` GetTable calls are blocked; false after kPatience.
  bool AwaitBlocked(int n) {
    absl::MutexLock lock(&mu_);
    auto reached = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return blocked_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), kPatience);
  }

 private:
  absl::Mutex mu_;
  bool open_ ABSL_GUARDED_BY(mu_) = true;
  int blocked_ ABSL_GUARDED_BY(mu_) = 0;
};

// A PlanDone that records its result and whether it ran.
struct Outcome {
  absl::Notification done;
  absl::StatusOr<PlanPtr> plan = absl::UnknownError("not called");
  Router::PlanDone Callback() {
    return [this](absl::StatusOr<PlanPtr> p) {
      plan = std::move(p);
      done.Notify();
    };
  }
};

class RouterAsyncTest : public ::testing::Test {
 protected:
  void Make(int solve_threads, size_t max_waiting) {
    auto router = Router::Create({.tables = &source_,
                                  .watch_poll = absl::Milliseconds(50),
                                  .solve_threads = solve_threads,
                                  .max_waiting_solves = max_waiting});
    ASSERT_TRUE(router.ok()) << router.status();
    router_ = std::move(router).value();
  }
  void TearDown() override {
    source_.SetOpen(true);
    if (router_) router_->Shutdown();
  }

  GateTableSource source_;
  std::unique_ptr<Router> router_;
};

TEST_F(RouterAsyncTest, AWarmRequestIsAnsweredBeforeReturningAndAColdOneOnASolveThread) {
  Make(2, 16);
  ASSERT_TRUE(router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(4)}).ok());
  source_.SetOpen(false);
  Outcome cold;
  router_->SolvePlanAsync({.model = "tiny", .budget = Budget::Ratio(4), .table_version = 7},
                          cold.Callback());
  EXPECT_FALSE(cold.done.HasBeenNotified()) << "a cold request was answered on the caller's thread";
  ASSERT_TRUE(source_.AwaitBlocked(1));
  // While that solve thread waits for the table source, warm requests and
  // bad ones are answered right away.
  Outcome warm, bad;
  router_->SolvePlanAsync({.model = "tiny", .budget = Budget::Ratio(4)}, warm.Callback());
  ASSERT_TRUE(warm.done.HasBeenNotified());
  ASSERT_TRUE(warm.plan.ok()) << warm.plan.status();
  EXPECT_EQ((*warm.plan)->table_version, 1u);
  router_->SolvePlanAsync({.model = "tiny", .budget = Budget::Ratio(0.5)}, bad.Callback());
  ASSERT_TRUE(bad.done.HasBeenNotified());
  EXPECT_TRUE(absl::IsInvalidArgument(bad.plan.status())) << bad.plan.status();
  EXPECT_FALSE(cold.done.HasBeenNotified());
  source_.SetOpen(true);
  ASSERT_TRUE(cold.done.WaitForNotificationWithTimeout(kPatience));
  ASSERT_TRUE(cold.plan.ok()) << cold.plan.status();
  EXPECT_EQ((*cold.plan)->table_version, 7u);
}

TEST_F(RouterAsyncTest, MissesBeyondTheWaitingBoundAreRefusedAtOnce) {
  Make(1, 2);
  source_.SetOpen(false);
  std::vector<std::unique_ptr<Outcome>> outcomes;
  for (int i = 0; i < 4; ++i) {
    outcomes.push_back(std::make_unique<Outcome>());
    router_->SolvePlanAsync(
        {.model = "tiny", .budget = Budget::Ratio(4), .table_version = static_cast<uint64_t>(i + 1)},
        outcomes.back()->Callback());
    if (i == 0) ASSERT_TRUE(source_.AwaitBlocked(1));  // the one thread is busy from here
  }
  // One running, two waiting, the fourth refused.
  ASSERT_TRUE(outcomes[3]->done.HasBeenNotified());
  EXPECT_TRUE(absl::IsResourceExhausted(outcomes[3]->plan.status())) << outcomes[3]->plan.status();
  EXPECT_NE(outcomes[3]->plan.status().message().find("2 plans to solve waiting"),
            std::string::npos)
      << outcomes[3]->plan.status();
  source_.SetOpen(true);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(outcomes[i]->done.WaitForNotificationWithTimeout(kPatience)) << i;
    ASSERT_TRUE(outcomes[i]->plan.ok()) << outcomes[i]->plan.status();
    EXPECT_EQ((*outcomes[i]->plan)->table_version, static_cast<uint64_t>(i + 1));
  }
}

TEST_F(RouterAsyncTest, WatchPlansAsyncSubscribesOnASolveThreadForAColdModel) {
  Make(2, 16);
  source_.SetOpen(false);
  std::atomic<int> plans{0};
  absl::Notification subscribed;
  absl::StatusOr<std::unique_ptr<PlanSubscription>> subscription =
      absl::UnknownError("not called");
  router_->WatchPlansAsync(
      {.model = "tiny", .budget = Budget::Ratio(4)}, [&](PlanPtr) { ++plans; },
      [&](absl::StatusOr<std::unique_ptr<PlanSubscription>> s) {
        subscription = std::move(s);
        subscribed.Notify();
      });
  EXPECT_FALSE(subscribed.HasBeenNotified());
  ASSERT_TRUE(source_.AwaitBlocked(1));
  source_.SetOpen(true);
  ASSERT_TRUE(subscribed.WaitForNotificationWithTimeout(kPatience));
  ASSERT_TRUE(subscription.ok()) << subscription.status();
  EXPECT_EQ(plans, 1) << "the first plan came before the subscription";
  subscription->reset();
  // The model is known and the plan cached now: all before returning.
  absl::Notification again;
  router_->WatchPlansAsync({.model = "tiny", .budget = Budget::Ratio(4)}, [&](PlanPtr) { ++plans; },
                           [&](absl::StatusOr<std::unique_ptr<PlanSubscription>> s) {
                             EXPECT_TRUE(s.ok()) << s.status();
                             again.Notify();
                           });
  EXPECT_TRUE(again.HasBeenNotified());
  EXPECT_EQ(plans, 2);
}

// Over gRPC: SolvePlan calls whose table source never answers do not hold
// the server's callback threads, so a warm call still completes.
TEST_F(RouterAsyncTest, AWarmRpcCompletesWhileColdOnesWaitForTheTableSource) {
  constexpr int kCold = 16;
  Make(kCold, 64);
  ASSERT_TRUE(router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(4)}).ok());
  auto server = RouterServer::Start(router_.get(), {});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::Router::NewStub(
      grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  source_.SetOpen(false);
  std::vector<std::thread> cold;
  std::atomic<int> cold_ok{0};
  for (int i = 0; i < kCold; ++i) {
    cold.emplace_back([&, i] {
      v1::SolvePlanRequest request;
      request.set_model("tiny");
      request.mutable_budget()->set_ratio(4);
      request.set_table_version(100 + i);
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + 2 * kPatience));
      v1::Plan plan;
      if (stub->SolvePlan(&context, request, &plan).ok() && plan.table_version() == 100u + i) {
        ++cold_ok;
      }
    });
  }
  // With the calls on the callback threads, only as many reach the table
  // source as the server has threads (and then the warm call waits too).
  const bool all_waiting = source_.AwaitBlocked(kCold);
  EXPECT_TRUE(all_waiting) << "the cold calls did not all reach the table source";
  if (all_waiting) {
    v1::SolvePlanRequest request;
    request.set_model("tiny");
    request.mutable_budget()->set_ratio(4);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + kPatience));
    v1::Plan plan;
    grpc::Status warm = stub->SolvePlan(&context, request, &plan);
    EXPECT_TRUE(warm.ok()) << warm.error_message();
    EXPECT_EQ(plan.table_version(), 1u);
  }
  source_.SetOpen(true);
  for (auto& t : cold) t.join();
  EXPECT_EQ(cold_ok, kCold);
  (*server)->Shutdown();
}

}  // namespace
}  // namespace moend::router

// The plan client against the real binaries: it follows a (model, budget),
// survives a router kill -9 and restart (reconnecting with backoff and
// picking up the plan of a table published while the router was down), and
// reports router errors without failing.
#include "clients/plan_client/plan_client.h"

#include <signal.h>

#include <atomic>
#include <vector>

#include "core/solver.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/router/loopback_stack.h"
#include "tests/util/wait.h"

namespace moend::plan_client {
namespace {

using ::testing::HasSubstr;
using router::testing::LoopbackStack;
using router::testing::MakeHeadTable;
using router::testing::MakeTable;
using moend::testing::WaitUntil;

constexpr absl::Duration kPatience = absl::Seconds(60);  // failure guard

TEST(PlanClientTest, ReconnectsAfterTheRouterIsKilledAndRestarted) {
  LoopbackStack stack;
  ASSERT_NO_FATAL_FAILURE(stack.StartRegistry());
  ASSERT_EQ(stack.Publish(1), 1u);
  const std::string address = stack.StartRouter();
  ASSERT_FALSE(address.empty()) << stack.router().output();

  auto client = PlanClient::Connect({.target = address,
                                     .backoff_initial = absl::Milliseconds(20),
                                     .backoff_max = absl::Milliseconds(200)});
  ASSERT_TRUE(client.ok()) << client.status();
  std::atomic<int> callbacks{0};
  auto watch = (*client)->Watch("tinycode", Budget::Ratio(10), "greedy",
                                [&](const PlanPtr&) { ++callbacks; });
  ASSERT_TRUE(watch.ok()) << watch.status();

  auto first = (*watch)->WaitForNewer(0, kPatience);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ((*first)->table_version, 1u);
  auto expected1 = Solve(MakeTable("tinycode", 1), Budget::Ratio(10), SolverKind::kGreedy);
  ASSERT_TRUE(expected1.ok());
  EXPECT_EQ((*first)->plan.layers, expected1->layers);
  EXPECT_EQ((*watch)->Current(), *first);
  EXPECT_EQ((*watch)->streams(), 1);

  // kill -9 the router; the node keeps its plan.
  stack.DropRouter();
  ASSERT_EQ(stack.Publish(2), 2u);  // lands while no router runs
  ASSERT_TRUE(WaitUntil([&] { return !(*watch)->last_error().ok(); }, kPatience))
      << "the watch did not notice the router was gone";
  EXPECT_EQ((*watch)->last_error().code(), absl::StatusCode::kUnavailable)
      << (*watch)->last_error();
  EXPECT_EQ((*watch)->Current(), *first);

  // A new router on the same address: the client reconnects by itself and
  // gets the plan of the newest table as the stream's first message.
  ASSERT_EQ(stack.StartRouter(address), address) << stack.router().output();
  auto second = (*watch)->WaitForNewer(1, kPatience);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ((*second)->table_version, 2u);
  auto expected2 = Solve(MakeTable("tinycode", 2), Budget::Ratio(10), SolverKind::kGreedy);
  ASSERT_TRUE(expected2.ok());
  EXPECT_EQ((*second)->plan.layers, expected2->layers);
  EXPECT_EQ((*watch)->Current(), *second);
  EXPECT_EQ((*watch)->streams(), 2);
  EXPECT_EQ(callbacks.load(), 2);
  // A plan taken before the swap is still whole: requests in flight keep it.
  EXPECT_EQ((*first)->table_version, 1u);
  EXPECT_EQ((*first)->plan.layers, expected1->layers);

  // And the stream is live again: a newer table reaches the client.
  ASSERT_EQ(stack.Publish(3), 3u);
  auto third = (*watch)->WaitForNewer(2, kPatience);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ((*third)->table_version, 3u);
}

// Per-head routing through the real binaries: a table with s_head stored by
// the registry (RocksDB), fetched by the router, solved per head, streamed
// and converted: the client holds the per-head plan; a newer table without
// s_head gives a per-layer plan again.
TEST(PlanClientTest, FollowsPerHeadPlansOfATableWithHeadRows) {
  LoopbackStack stack;
  ASSERT_NO_FATAL_FAILURE(stack.StartRegistry());
  ASSERT_EQ(stack.Publish(MakeHeadTable("tinycode", 1)), 1u);
  const std::string address = stack.StartRouter();
  ASSERT_FALSE(address.empty()) << stack.router().output();
  auto client = PlanClient::Connect({.target = address});
  ASSERT_TRUE(client.ok()) << client.status();
  auto watch = (*client)->Watch("tinycode", Budget::Ratio(10), "greedy");
  ASSERT_TRUE(watch.ok()) << watch.status();

  auto first = (*watch)->WaitForNewer(0, kPatience);
  ASSERT_TRUE(first.ok()) << first.status();
  auto expected1 = Solve(MakeHeadTable("tinycode", 1), Budget::Ratio(10), SolverKind::kGreedy);
  ASSERT_TRUE(expected1.ok()) << expected1.status();
  ASSERT_EQ(expected1->HeadsPerLayer(), 2);
  EXPECT_EQ((*first)->plan.layers, expected1->layers);
  EXPECT_EQ((*first)->plan.RuntimeTuples().size(), 24u);

  ASSERT_EQ(stack.Publish(2), 2u);  // MakeTable: no s_head
  auto second = (*watch)->WaitForNewer(1, kPatience);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ((*second)->plan.HeadsPerLayer(), 0);
  auto expected2 = Solve(MakeTable("tinycode", 2), Budget::Ratio(10), SolverKind::kGreedy);
  ASSERT_TRUE(expected2.ok());
  EXPECT_EQ((*second)->plan.layers, expected2->layers);
}

TEST(PlanClientTest, RouterErrorsShowInLastErrorWhileRetrying) {
  LoopbackStack stack;
  ASSERT_NO_FATAL_FAILURE(stack.StartRegistry());
  const std::string address = stack.StartRouter();
  ASSERT_FALSE(address.empty()) << stack.router().output();
  auto client = PlanClient::Connect({.target = address,
                                     .backoff_initial = absl::Milliseconds(20),
                                     .backoff_max = absl::Milliseconds(100)});
  ASSERT_TRUE(client.ok());
  // The model has no table yet: NotFound, retried until a table lands.
  auto watch = (*client)->Watch("tinycode", Budget::Ratio(6), "exact");
  ASSERT_TRUE(watch.ok()) << watch.status();
  ASSERT_TRUE(WaitUntil([&] { return !(*watch)->last_error().ok(); }, kPatience))
      << "no error while the model has no table";
  EXPECT_EQ((*watch)->last_error().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string((*watch)->last_error().message()), HasSubstr("no sensitivity table"));
  EXPECT_EQ((*watch)->Current(), nullptr);
  ASSERT_EQ(stack.Publish(1), 1u);
  auto plan = (*watch)->WaitForNewer(0, kPatience);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ((*plan)->plan.solver, "exact");

  // An unknown model stays an error, with the router's message.
  auto ghost = (*client)->Watch("ghost", Budget::Ratio(6));
  ASSERT_TRUE(ghost.ok());
  ASSERT_TRUE(WaitUntil([&] { return !(*ghost)->last_error().ok(); }, kPatience))
      << "no error for an unknown model";
  EXPECT_EQ((*ghost)->last_error().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string((*ghost)->last_error().message()), HasSubstr("ghost"));
}

TEST(PlanClientTest, ValidatesLocally) {
  EXPECT_EQ(PlanClient::Connect({}).status().code(), absl::StatusCode::kInvalidArgument);
  auto client = PlanClient::Connect({.target = "127.0.0.1:1"});
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->Watch("", Budget::Ratio(4)).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto bad_budget = (*client)->Watch("m", Budget::Ratio(0.5));
  EXPECT_EQ(bad_budget.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_budget.status().message()), HasSubstr(">= 1"));
  auto bad_solver = (*client)->Watch("m", Budget::Ratio(4), "magic");
  EXPECT_EQ(bad_solver.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_solver.status().message()), HasSubstr("2d_uniform"));
}

}  // namespace
}  // namespace moend::plan_client

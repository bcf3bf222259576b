// The real moend-router in front of the real moend-registry, on loopback:
// publish a table, SolvePlan, open WatchPlans, publish a newer table, receive
// the new plan; metrics over HTTP; SIGTERM ends streams with UNAVAILABLE.
#include <signal.h>
#include <sys/wait.h>

#include "core/solver.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "moend/v1/router.grpc.pb.h"
#include "services/router/plan_convert.h"
#include "tests/router/loopback_stack.h"

namespace moend::router {
namespace {

using ::testing::HasSubstr;
using testing::LoopbackStack;
using testing::MakeTable;

std::unique_ptr<grpc::ClientContext> Context() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  return ctx;
}

v1::Budget Ratio(double r) {
  v1::Budget b;
  b.set_ratio(r);
  return b;
}

TEST(RouterLoopbackTest, SolveWatchAndNewVersionAcrossRealBinaries) {
  LoopbackStack stack;
  ASSERT_NO_FATAL_FAILURE(stack.StartRegistry());
  std::string metrics;
  const std::string address = stack.StartRouter("127.0.0.1:0", &metrics);
  ASSERT_FALSE(address.empty()) << stack.router().output();
  ASSERT_FALSE(metrics.empty()) << stack.router().output();
  auto stub =
      v1::Router::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));

  // No table yet: NotFound that says so.
  v1::SolvePlanRequest request;
  request.set_model("tinycode");
  *request.mutable_budget() = Ratio(8);
  request.set_solver("exact");
  v1::Plan plan;
  auto ctx0 = Context();
  grpc::Status s = stub->SolvePlan(ctx0.get(), request, &plan);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("no sensitivity table"));

  ASSERT_EQ(stack.Publish(1), 1u);
  auto ctx1 = Context();
  s = stub->SolvePlan(ctx1.get(), request, &plan);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(plan.version(), 1u);
  EXPECT_EQ(plan.model(), "tinycode");
  auto expected1 = Solve(MakeTable("tinycode", 1), Budget::Ratio(8), SolverKind::kExact);
  ASSERT_TRUE(expected1.ok());
  auto got1 = PlanFromProto(plan);
  ASSERT_TRUE(got1.ok()) << got1.status();
  EXPECT_EQ(got1->plan.layers, expected1->layers);

  // Unknown model and unknown solver over the real stack.
  v1::SolvePlanRequest ghost = request;
  ghost.set_model("ghost");
  auto ctx2 = Context();
  s = stub->SolvePlan(ctx2.get(), ghost, &plan);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("ghost"));

  v1::WatchPlansRequest watch;
  watch.set_model("tinycode");
  *watch.mutable_budget() = Ratio(8);
  watch.set_solver("exact");
  auto wctx = Context();
  auto reader = stub->WatchPlans(wctx.get(), watch);
  ASSERT_TRUE(reader->Read(&plan));
  EXPECT_EQ(plan.version(), 1u);

  ASSERT_EQ(stack.Publish(2), 2u);
  ASSERT_TRUE(reader->Read(&plan)) << reader->Finish().error_message();
  EXPECT_EQ(plan.version(), 2u);
  EXPECT_EQ(plan.table_version(), 2u);
  auto expected2 = Solve(MakeTable("tinycode", 2), Budget::Ratio(8), SolverKind::kExact);
  ASSERT_TRUE(expected2.ok());
  auto got2 = PlanFromProto(plan);
  ASSERT_TRUE(got2.ok()) << got2.status();
  EXPECT_EQ(got2->plan.layers, expected2->layers);

  // The same plan through SolvePlan now (latest = 2), from the cache.
  auto ctx3 = Context();
  s = stub->SolvePlan(ctx3.get(), request, &plan);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(plan.version(), 2u);

  const std::string scrape = testing::HttpGet(metrics, "/metrics");
  EXPECT_THAT(scrape, HasSubstr("moend_router_plan_cache_hits_total 2"));
  EXPECT_THAT(scrape, HasSubstr("moend_router_watch_streams 1"));
  EXPECT_THAT(scrape, HasSubstr("moend_router_plan_version{model=\"tinycode\"} 2"));
  EXPECT_THAT(scrape, HasSubstr("moend_router_solve_seconds_count{solver=\"exact\"} 2"));
  // The HTTP probe for TLS deployments: the router's health service, in process.
  EXPECT_THAT(testing::HttpGet(metrics, "/healthz"), HasSubstr("200 OK\r\n"));

  // SIGTERM: the open stream ends with UNAVAILABLE and the router exits 0.
  const int status = stack.router().Signal(SIGTERM, absl::Seconds(30));
  ASSERT_NE(status, -1) << "moend-router did not exit on SIGTERM";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << stack.router().output();
  EXPECT_FALSE(reader->Read(&plan));
  s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST(RouterLoopbackTest, BadFlagsExitWithUsage) {
  testing::ChildProcess router(MOEND_ROUTER_BIN, {"--listen", "127.0.0.1:0"});
  EXPECT_EQ(router.WaitForLine("--registry is", testing::kStartupPatience), " required");
  const int status = router.Signal(0, testing::kStartupPatience);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2);
}

}  // namespace
}  // namespace moend::router

// The gRPC adapter in-process on port 0, over a fake table source: status
// codes and messages on the wire, proto conversion, WatchPlans streams
// (first plan, newer plans, cancellation, shutdown).
#include "services/router/router_service.h"

#include <memory>
#include <string>

#include "core/solver.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "moend/v1/router.grpc.pb.h"
#include "prometheus/registry.h"
#include "services/router/plan_convert.h"
#include "tests/router/router_test_util.h"
#include "tests/util/wait.h"

namespace moend::router {
namespace {

using ::testing::HasSubstr;
using testing::FakeTableSource;
using testing::MakeHeadTable;
using testing::MakeTable;

double Gauge(prometheus::Registry& registry, const std::string& name) {
  for (const auto& family : registry.Collect()) {
    if (family.name == name && !family.metric.empty()) return family.metric[0].gauge.value;
  }
  return -1;
}

class RouterServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    source_.Publish(MakeTable("tiny", 1));
    auto router = Router::Create({.tables = &source_, .metrics = &metrics_,
                                  .watch_poll = absl::Milliseconds(50)});
    ASSERT_TRUE(router.ok()) << router.status();
    router_ = std::move(router).value();
    auto server = RouterServer::Start(router_.get(), {});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value();
    ASSERT_GT(server_->port(), 0);
    stub_ = v1::Router::NewStub(
        grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
    if (router_) router_->Shutdown();
  }

  std::unique_ptr<grpc::ClientContext> Context() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    return ctx;
  }

  static v1::SolvePlanRequest Request(const std::string& model, double ratio,
                                      const std::string& solver = "") {
    v1::SolvePlanRequest r;
    r.set_model(model);
    r.mutable_budget()->set_ratio(ratio);
    r.set_solver(solver);
    return r;
  }

  FakeTableSource source_;
  prometheus::Registry metrics_;
  std::unique_ptr<Router> router_;
  std::unique_ptr<RouterServer> server_;
  std::unique_ptr<v1::Router::Stub> stub_;
};

TEST_F(RouterServiceTest, SolvePlanReturnsTheRoutersPlanAsProto) {
  v1::Plan plan;
  auto ctx = Context();
  grpc::Status s = stub_->SolvePlan(ctx.get(), Request("tiny", 6, "exact"), &plan);
  ASSERT_TRUE(s.ok()) << s.error_message();
  auto direct = router_->SolvePlan({.model = "tiny", .budget = Budget::Ratio(6), .solver = "exact"});
  ASSERT_TRUE(direct.ok());
  auto back = PlanFromProto(plan);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->plan, (*direct)->plan);
  EXPECT_EQ(plan.version(), 1u);
  EXPECT_EQ(plan.table_version(), 1u);
  EXPECT_EQ(plan.solver(), "exact");
  EXPECT_EQ(plan.layers_size(), 12);
  EXPECT_LE(plan.total_bytes(), plan.budget_bytes());
  EXPECT_NEAR(static_cast<double>(plan.full_bytes()) / plan.total_bytes(), plan.ratio(), 1e-9);
  EXPECT_EQ(plan.full_bytes(), 12 * FullLayerBytes({2, 64}, 3840));

  // Bytes at a context.
  v1::SolvePlanRequest bytes = Request("tiny", 0);
  bytes.mutable_budget()->set_bytes(2'000'000);
  bytes.mutable_budget()->set_context(4000);
  auto ctx2 = Context();
  s = stub_->SolvePlan(ctx2.get(), bytes, &plan);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(plan.context(), 4000);
  EXPECT_EQ(plan.budget_bytes(), 2'000'000);
  EXPECT_LE(plan.total_bytes(), 2'000'000);
}

TEST_F(RouterServiceTest, PerHeadPlansCrossTheWireAndUnitsSelectThem) {
  source_.Publish(MakeHeadTable("heads", 1));
  v1::Plan plan;
  auto ctx = Context();
  grpc::Status s = stub_->SolvePlan(ctx.get(), Request("heads", 6, "greedy"), &plan);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(plan.layers_size(), 12);
  for (const v1::LayerPlan& l : plan.layers()) {
    ASSERT_EQ(l.heads_size(), 2) << "layer " << l.layer();
    EXPECT_EQ(l.bytes(), l.heads(0).bytes() + l.heads(1).bytes());
  }
  auto direct = router_->SolvePlan({.model = "heads", .budget = Budget::Ratio(6), .solver = "greedy"});
  ASSERT_TRUE(direct.ok()) << direct.status();
  ASSERT_EQ((*direct)->plan.HeadsPerLayer(), 2);
  auto back = PlanFromProto(plan);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->plan, (*direct)->plan);

  // units = "layer": a per-layer plan of the same table.
  v1::SolvePlanRequest layer = Request("heads", 6, "greedy");
  layer.set_units("layer");
  auto ctx2 = Context();
  s = stub_->SolvePlan(ctx2.get(), layer, &plan);
  ASSERT_TRUE(s.ok()) << s.error_message();
  for (const v1::LayerPlan& l : plan.layers()) EXPECT_EQ(l.heads_size(), 0);
  back = PlanFromProto(plan);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->plan.HeadsPerLayer(), 0);

  // units = "head" for a table without per-head rows.
  v1::SolvePlanRequest head = Request("tiny", 6, "greedy");
  head.set_units("head");
  auto ctx3 = Context();
  s = stub_->SolvePlan(ctx3.get(), head, &plan);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();

  // A watch streams the per-head plan too.
  v1::WatchPlansRequest w;
  w.set_model("heads");
  w.set_solver("greedy");
  w.mutable_budget()->set_ratio(6);
  auto ctx4 = Context();
  auto reader = stub_->WatchPlans(ctx4.get(), w);
  ASSERT_TRUE(reader->Read(&plan));
  back = PlanFromProto(plan);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->plan, (*direct)->plan);
  ctx4->TryCancel();
  reader->Finish();
}

// plan_convert both ways: a per-head plan keeps every head's tuple, bytes
// and error; a LayerPlan without heads (every plan before per-head routing)
// is a per-layer layer; head counts other than num_kv_heads are refused.
TEST(PlanConvertTest, PerHeadPlansRoundTripAndBadHeadCountsAreRefused) {
  auto solved = Solve(MakeHeadTable("heads", 3), Budget::Ratio(5), SolverKind::kGreedy);
  ASSERT_TRUE(solved.ok()) << solved.status();
  ASSERT_EQ(solved->HeadsPerLayer(), 2);
  VersionedPlan plan{.table_version = 4, .num_kv_heads = 2, .head_dim = 64,
                     .created = absl::FromUnixSeconds(1'800'000'000), .plan = *solved};
  const v1::Plan wire = ToProto(plan);
  ASSERT_EQ(wire.layers_size(), 12);
  for (int l = 0; l < 12; ++l) {
    const v1::LayerPlan& lp = wire.layers(l);
    ASSERT_EQ(lp.heads_size(), 2);
    for (int h = 0; h < 2; ++h) {
      const PlanHead& head = solved->layers[l].heads[h];
      EXPECT_EQ(lp.heads(h).keep(), head.tuple.keep);
      EXPECT_EQ(lp.heads(h).kbits(), head.tuple.kbits);
      EXPECT_EQ(lp.heads(h).vbits(), head.tuple.vbits);
      EXPECT_EQ(lp.heads(h).bytes(), head.bytes);
      EXPECT_EQ(lp.heads(h).predicted_error(), head.predicted_error);
    }
    EXPECT_EQ(lp.kbits(), 0) << "a per-head layer's own tuple is unused";
  }
  v1::Plan parsed;
  ASSERT_TRUE(parsed.ParseFromString(wire.SerializeAsString()));
  auto back = PlanFromProto(parsed);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->plan, *solved);
  EXPECT_EQ(back->plan.RuntimeTuples(), solved->RuntimeTuples());

  // A layer with one head of two.
  v1::Plan short_heads = wire;
  short_heads.mutable_layers(3)->mutable_heads()->RemoveLast();
  auto refused = PlanFromProto(short_heads);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("per-head tuples"));
  // A plan message without heads, as every plan before per-head routing.
  auto per_layer = Solve(MakeTable("tiny", 3), Budget::Ratio(5), SolverKind::kGreedy);
  ASSERT_TRUE(per_layer.ok());
  v1::Plan old = ToProto(VersionedPlan{.table_version = 1, .num_kv_heads = 2, .head_dim = 64,
                                       .created = absl::UnixEpoch(), .plan = *per_layer});
  for (const v1::LayerPlan& l : old.layers()) EXPECT_EQ(l.heads_size(), 0);
  auto old_back = PlanFromProto(old);
  ASSERT_TRUE(old_back.ok()) << old_back.status();
  EXPECT_EQ(old_back->plan, *per_layer);
  EXPECT_EQ(old_back->plan.HeadsPerLayer(), 0);
}

TEST_F(RouterServiceTest, InvalidRequestsGetClearStatuses) {
  struct Case {
    v1::SolvePlanRequest request;
    grpc::StatusCode code;
    std::string message;
  };
  v1::SolvePlanRequest no_budget;
  no_budget.set_model("tiny");
  v1::SolvePlanRequest no_context = Request("tiny", 0);
  no_context.mutable_budget()->set_bytes(1000);
  const Case cases[] = {
      {Request("", 4), grpc::StatusCode::INVALID_ARGUMENT, "model is required"},
      {Request("ghost", 4), grpc::StatusCode::NOT_FOUND, "'ghost' is not registered"},
      {Request("tiny", 0), grpc::StatusCode::INVALID_ARGUMENT, "finite number >= 1"},
      {Request("tiny", std::nan("")), grpc::StatusCode::INVALID_ARGUMENT, "finite number >= 1"},
      {Request("tiny", 4, "best"), grpc::StatusCode::INVALID_ARGUMENT, "exact"},
      {no_budget, grpc::StatusCode::INVALID_ARGUMENT, "budget is missing"},
      {no_context, grpc::StatusCode::INVALID_ARGUMENT, "needs a context > 0"},
      {Request("tiny", 500), grpc::StatusCode::RESOURCE_EXHAUSTED, "smallest feasible"},
  };
  for (const Case& c : cases) {
    v1::Plan plan;
    auto ctx = Context();
    grpc::Status s = stub_->SolvePlan(ctx.get(), c.request, &plan);
    EXPECT_EQ(s.error_code(), c.code) << c.message << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(c.message));

    v1::WatchPlansRequest w;
    w.set_model(c.request.model());
    *w.mutable_budget() = c.request.budget();
    w.set_solver(c.request.solver());
    auto wctx = Context();
    auto reader = stub_->WatchPlans(wctx.get(), w);
    EXPECT_FALSE(reader->Read(&plan));
    grpc::Status ws = reader->Finish();
    EXPECT_EQ(ws.error_code(), c.code) << c.message << ": " << ws.error_message();
  }
  EXPECT_EQ(Gauge(metrics_, "moend_router_watch_streams"), 0);
}

TEST_F(RouterServiceTest, WatchPlansStreamsTheCurrentThenNewerPlans) {
  v1::WatchPlansRequest w;
  w.set_model("tiny");
  w.mutable_budget()->set_ratio(8);
  w.set_solver("greedy");
  auto ctx = Context();
  auto reader = stub_->WatchPlans(ctx.get(), w);
  v1::Plan plan;
  ASSERT_TRUE(reader->Read(&plan));
  EXPECT_EQ(plan.version(), 1u);
  EXPECT_EQ(Gauge(metrics_, "moend_router_watch_streams"), 1);

  source_.Publish(MakeTable("tiny", 2));
  ASSERT_TRUE(reader->Read(&plan));
  EXPECT_EQ(plan.version(), 2u);
  auto expected = Solve(MakeTable("tiny", 2), Budget::Ratio(8), SolverKind::kGreedy);
  ASSERT_TRUE(expected.ok());
  auto got = PlanFromProto(plan);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->plan.layers, expected->layers);

  // The client cancels: the router drops the subscription.
  ctx->TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(moend::testing::WaitUntil(
      [&] { return Gauge(metrics_, "moend_router_watch_streams") == 0; }, absl::Seconds(60)))
      << "the cancelled stream is still counted: "
      << Gauge(metrics_, "moend_router_watch_streams");
}

TEST_F(RouterServiceTest, ShutdownEndsWatchStreamsWithUnavailable) {
  v1::WatchPlansRequest w;
  w.set_model("tiny");
  w.mutable_budget()->set_ratio(4);
  auto ctx = Context();
  auto reader = stub_->WatchPlans(ctx.get(), w);
  v1::Plan plan;
  ASSERT_TRUE(reader->Read(&plan));
  server_->Shutdown(absl::Seconds(5));
  EXPECT_FALSE(reader->Read(&plan));
  grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("shutting down"));
  EXPECT_EQ(Gauge(metrics_, "moend_router_watch_streams"), 0);
}

TEST(RouterServerTest, ReportsABusyAddress) {
  FakeTableSource source;
  auto router = Router::Create({.tables = &source});
  ASSERT_TRUE(router.ok());
  auto first = RouterServer::Start(router->get(), {});
  ASSERT_TRUE(first.ok());
  auto second = RouterServer::Start(router->get(), {.listen_address = (*first)->address()});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr((*first)->address()));
}

}  // namespace
}  // namespace moend::router

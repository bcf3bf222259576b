// Malformed, oversized and adversarial requests against the real registry and
// router binaries, over raw stubs (no client-side validation in the way):
// each gets a clear status (a known code and a message naming the problem),
// never a crash, a hang or an unbounded allocation, and the servers keep
// serving afterwards with nothing stored by the refused calls.
#include <sys/resource.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "moend/v1/registry.grpc.pb.h"
#include "moend/v1/router.grpc.pb.h"
#include "tests/router/loopback_stack.h"
#include "tests/util/child_process.h"

namespace moend {
namespace {

using ::testing::AnyOf;
using ::testing::Eq;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::IsEmpty;
using router::testing::LoopbackStack;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();

// Resident memory of a process in KiB (VmRSS), -1 if unknown.
int64_t RssKiB(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(256 << 20);  // to send oversized requests
  args.SetMaxReceiveMessageSize(256 << 20);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return context;
}

// A refused call: one of the codes a client can act on and a message.
#define EXPECT_REFUSED(status, ...)                                                     \
  do {                                                                                  \
    const grpc::Status s_ = (status);                                                   \
    EXPECT_FALSE(s_.ok()) << "accepted";                                                \
    EXPECT_THAT(s_.error_code(), AnyOf(__VA_ARGS__)) << s_.error_message();             \
    EXPECT_THAT(s_.error_message(), Not(IsEmpty()));                                    \
    EXPECT_LT(s_.error_message().size(), 4096u) << "the message echoes the whole input"; \
  } while (0)

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(stack_.StartRegistry());
    ASSERT_EQ(stack_.Publish(1), 1u);
    router_address_ = stack_.StartRouter();
    ASSERT_FALSE(router_address_.empty()) << stack_.router().output();
    registry_ = v1::Registry::NewStub(Channel(stack_.registry_address()));
    router_ = v1::Router::NewStub(Channel(router_address_));
  }

  grpc::Status Solve(const v1::SolvePlanRequest& request, v1::Plan* plan = nullptr) {
    v1::Plan ignored;
    return router_->SolvePlan(Context().get(), request, plan ? plan : &ignored);
  }

  v1::SolvePlanRequest RatioRequest(double ratio) {
    v1::SolvePlanRequest r;
    r.set_model("tinycode");
    r.mutable_budget()->set_ratio(ratio);
    return r;
  }

  // Both servers still answer a valid request.
  void ExpectStillServing() {
    v1::Plan plan;
    grpc::Status s = Solve(RatioRequest(4), &plan);
    EXPECT_TRUE(s.ok()) << s.error_message();
    v1::Model model;
    v1::GetModelRequest get;
    get.set_name("tinycode");
    s = registry_->GetModel(Context().get(), get, &model);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(model.version(), 1u) << "a refused call changed the registry";
  }

  LoopbackStack stack_;
  std::string router_address_;
  std::unique_ptr<v1::Registry::Stub> registry_;
  std::unique_ptr<v1::Router::Stub> router_;
};

TEST_F(BadInputTest, RouterRefusesBadBudgetsAndNames) {
  using C = grpc::StatusCode;
  for (double ratio : {kNaN, kInf, -kInf, -1.0, 0.0, 0.5, 1e308, 1e-300}) {
    SCOPED_TRACE(ratio);
    // Infeasible budgets are RESOURCE_EXHAUSTED (the smallest plan is named).
    EXPECT_REFUSED(Solve(RatioRequest(ratio)), Eq(C::INVALID_ARGUMENT),
                   Eq(C::RESOURCE_EXHAUSTED));
  }
  for (int64_t bytes : {int64_t{-5}, int64_t{0}, int64_t{1}}) {
    v1::SolvePlanRequest r;
    r.set_model("tinycode");
    r.mutable_budget()->set_bytes(bytes);
    r.mutable_budget()->set_context(4096);
    EXPECT_REFUSED(Solve(r), Eq(C::INVALID_ARGUMENT), Eq(C::RESOURCE_EXHAUSTED));
  }
  for (int64_t context : {int64_t{-1}, kI64Max, int64_t{0}}) {
    v1::SolvePlanRequest r;
    r.set_model("tinycode");
    r.mutable_budget()->set_bytes(1 << 30);
    r.mutable_budget()->set_context(context);
    EXPECT_REFUSED(Solve(r), Eq(C::INVALID_ARGUMENT), Eq(C::OUT_OF_RANGE));
  }
  v1::SolvePlanRequest no_budget;
  no_budget.set_model("tinycode");
  EXPECT_REFUSED(Solve(no_budget), Eq(C::INVALID_ARGUMENT));
  v1::SolvePlanRequest bad_solver = RatioRequest(4);
  bad_solver.set_solver("magic");
  EXPECT_REFUSED(Solve(bad_solver), Eq(C::INVALID_ARGUMENT));
  v1::SolvePlanRequest future = RatioRequest(4);
  future.set_table_version(std::numeric_limits<uint64_t>::max());
  EXPECT_REFUSED(Solve(future), Eq(C::NOT_FOUND), Eq(C::INVALID_ARGUMENT));
  // The whole name space of a model: empty, absent, a megabyte long.
  for (const std::string& name : {std::string(), std::string("ghost"), std::string(1 << 20, 'm')}) {
    v1::SolvePlanRequest r = RatioRequest(4);
    r.set_model(name);
    EXPECT_REFUSED(Solve(r), Eq(C::INVALID_ARGUMENT), Eq(C::NOT_FOUND));
  }
  // A budget larger than any cache is not an error: the full-precision plan.
  v1::SolvePlanRequest huge;
  huge.set_model("tinycode");
  huge.mutable_budget()->set_bytes(kI64Max);
  huge.mutable_budget()->set_context(4096);
  v1::Plan plan;
  grpc::Status s = Solve(huge, &plan);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(plan.layers_size(), 12);
  for (const auto& layer : plan.layers()) {
    EXPECT_EQ(layer.keep(), 1.0);
    EXPECT_EQ(layer.kbits(), 16);
    EXPECT_EQ(layer.vbits(), 16);
  }
  ExpectStillServing();
}

TEST_F(BadInputTest, RouterRefusesBadWatchRequestsOnTheStream) {
  using C = grpc::StatusCode;
  for (double ratio : {kNaN, -1.0, 1e308}) {
    v1::WatchPlansRequest r;
    r.set_model("tinycode");
    r.mutable_budget()->set_ratio(ratio);
    auto context = Context();
    auto reader = router_->WatchPlans(context.get(), r);
    v1::Plan plan;
    EXPECT_FALSE(reader->Read(&plan));
    EXPECT_REFUSED(reader->Finish(), Eq(C::INVALID_ARGUMENT), Eq(C::RESOURCE_EXHAUSTED));
  }
  ExpectStillServing();
}

TEST_F(BadInputTest, RegistryRefusesAdversarialModelsJobsAndTables) {
  using C = grpc::StatusCode;
  const int64_t rss_before = RssKiB(stack_.registry_pid());
  // Models: absurd shapes, broken JSON, bad names.
  const std::vector<std::string> configs = {
      R"({"num_hidden_layers": 1000000, "num_attention_heads": 4, "head_dim": 64})",
      R"({"num_hidden_layers": -1, "num_attention_heads": 4, "head_dim": 64})",
      R"({"num_hidden_layers": 1e400, "num_attention_heads": 4, "head_dim": 64})",
      R"({"num_hidden_layers": 12, "num_attention_heads": 4, "num_key_value_heads": 3,
          "head_dim": 64})",
      R"({"num_hidden_layers": 12, "num_attention_heads": 4, "head_dim": 65})",
      R"({"num_hidden_layers": "12", "num_attention_heads": 4, "head_dim": 64})",
      R"({"num_hidden_layers": 12)",
      std::string(1 << 20, '['),
      R"({"num_hidden_layers": 12, "x": )" + std::string(40, '[') + std::string(40, ']') + "}",
      "",
  };
  for (const std::string& config : configs) {
    SCOPED_TRACE(config.substr(0, 80));
    v1::RegisterModelRequest r;
    r.set_name("adversary");
    r.set_config_json(config);
    v1::Model out;
    EXPECT_REFUSED(registry_->RegisterModel(Context().get(), r, &out), Eq(C::INVALID_ARGUMENT));
  }
  for (const std::string& name : {std::string(), std::string("../etc"), std::string(4096, 'n'),
                                  std::string("a/b"), std::string("\x01")}) {
    v1::RegisterModelRequest r;
    r.set_name(name);
    r.set_config_json(R"({"num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 64})");
    v1::Model out;
    EXPECT_REFUSED(registry_->RegisterModel(Context().get(), r, &out), Eq(C::INVALID_ARGUMENT));
  }

  // Jobs: overflowing shard counts, unknown tuples, impossible lengths.
  auto submit = [&](auto edit) {
    v1::SubmitJobRequest r;
    r.mutable_spec()->set_model("tinycode");
    r.mutable_spec()->set_seq_len(4096);
    r.mutable_spec()->set_num_samples(16);
    edit(*r.mutable_spec());
    v1::CalibrationJob out;
    return registry_->SubmitJob(Context().get(), r, &out);
  };
  EXPECT_REFUSED(submit([](v1::JobSpec& s) { s.set_num_samples(kI64Max); s.set_samples_per_shard(1); s.set_layers_per_shard(1); }),
                 Eq(C::INVALID_ARGUMENT));
  EXPECT_REFUSED(submit([](v1::JobSpec& s) { s.set_num_samples(4000000000000LL); s.set_samples_per_shard(1); }),
                 Eq(C::INVALID_ARGUMENT));
  EXPECT_REFUSED(submit([](v1::JobSpec& s) { s.set_seq_len(kI64Max); }), Eq(C::INVALID_ARGUMENT));
  EXPECT_REFUSED(submit([](v1::JobSpec& s) { s.set_seq_len(-4096); }), Eq(C::INVALID_ARGUMENT));
  EXPECT_REFUSED(submit([](v1::JobSpec& s) { s.set_compression_point(5000); }), Eq(C::INVALID_ARGUMENT));
  EXPECT_REFUSED(submit([](v1::JobSpec& s) { s.set_layers_per_shard(-3); }), Eq(C::INVALID_ARGUMENT));
  for (auto [keep, kbits, vbits] : {std::tuple{0.3, 4, 4}, {0.5, 3, 4}, {kNaN, 4, 4},
                                    {-0.5, 4, 4}, {1.5, 16, 16}, {0.5, 4, 1 << 30}}) {
    EXPECT_REFUSED(submit([&](v1::JobSpec& s) {
                     auto* t = s.add_tuples();
                     t->set_keep(keep);
                     t->set_kbits(kbits);
                     t->set_vbits(vbits);
                   }),
                   Eq(C::INVALID_ARGUMENT));
  }
  EXPECT_REFUSED(submit([](v1::JobSpec& s) {  // 10^6 tuples
                   for (int i = 0; i < 1000000; ++i) {
                     auto* t = s.add_tuples();
                     t->set_keep(1.0);
                     t->set_kbits(16);
                     t->set_vbits(16);
                   }
                 }),
                 Eq(C::INVALID_ARGUMENT), Eq(C::RESOURCE_EXHAUSTED));
  EXPECT_REFUSED(submit([](v1::JobSpec& s) { s.set_model("ghost"); }), Eq(C::NOT_FOUND));

  // Tables: 10^6 layers for a 12-layer model, NaN, negative, ragged rows,
  // and a message above the registry's size limit.
  auto publish = [&](auto edit) {
    v1::PublishTableRequest r;
    v1::SensitivityTable& t = *r.mutable_table();
    t.set_model("tinycode");
    t.set_num_layers(12);
    t.set_num_kv_heads(2);
    t.set_head_dim(64);
    t.set_seq_len(4096);
    t.set_compression_point(3840);
    t.set_samples(1);
    auto* full = t.add_tuples();
    full->set_keep(1.0);
    full->set_kbits(16);
    full->set_vbits(16);
    auto* small = t.add_tuples();
    small->set_keep(0.5);
    small->set_kbits(4);
    small->set_vbits(4);
    for (int l = 0; l < 12; ++l) {
      auto* row = t.add_s();
      row->add_s(0.0);
      row->add_s(0.01 * (l + 1));
    }
    edit(t);
    v1::PublishTableResponse out;
    return registry_->PublishTable(Context().get(), r, &out);
  };
  EXPECT_REFUSED(publish([](v1::SensitivityTable& t) {
                   t.set_num_layers(1000000);
                   t.clear_s();
                   for (int l = 0; l < 1000000; ++l) {
                     auto* row = t.add_s();
                     row->add_s(0.0);
                     row->add_s(0.5);
                   }
                 }),
                 Eq(C::INVALID_ARGUMENT), Eq(C::RESOURCE_EXHAUSTED));
  EXPECT_REFUSED(publish([](v1::SensitivityTable& t) { t.mutable_s(3)->set_s(1, kNaN); }),
                 Eq(C::INVALID_ARGUMENT));
  EXPECT_REFUSED(publish([](v1::SensitivityTable& t) { t.mutable_s(3)->set_s(1, -1.0); }),
                 Eq(C::INVALID_ARGUMENT));
  EXPECT_REFUSED(publish([](v1::SensitivityTable& t) { t.mutable_s(3)->add_s(0.1); }),
                 Eq(C::INVALID_ARGUMENT));
  EXPECT_REFUSED(publish([](v1::SensitivityTable& t) { t.set_num_kv_heads(1 << 30); }),
                 Eq(C::INVALID_ARGUMENT));
  EXPECT_REFUSED(publish([](v1::SensitivityTable& t) {  // ~80 MB > the 16 MiB limit
                   for (int i = 0; i < 10000000; ++i) t.mutable_s(0)->add_s(0.1);
                 }),
                 Eq(C::RESOURCE_EXHAUSTED));

  // Leases and reports naming nothing that exists.
  v1::HeartbeatRequest hb;
  hb.set_lease_id(std::string(100000, 'x'));
  hb.set_worker_id("w");
  v1::HeartbeatResponse hb_out;
  EXPECT_REFUSED(registry_->Heartbeat(Context().get(), hb, &hb_out), Eq(C::INVALID_ARGUMENT),
                 Eq(C::NOT_FOUND));
  v1::ReportShardRequest report;
  report.set_lease_id("job-999999/shard-0/attempt-1");
  report.set_worker_id("w");
  v1::ReportShardResponse report_out;
  EXPECT_REFUSED(registry_->ReportShard(Context().get(), report, &report_out),
                 Eq(C::INVALID_ARGUMENT), Eq(C::NOT_FOUND));

  ExpectStillServing();
  v1::ListJobsRequest list;
  v1::ListJobsResponse jobs;
  ASSERT_TRUE(registry_->ListJobs(Context().get(), list, &jobs).ok());
  EXPECT_EQ(jobs.jobs_size(), 0) << "a refused job was stored";
  v1::ListModelsRequest models_request;
  v1::ListModelsResponse models;
  ASSERT_TRUE(registry_->ListModels(Context().get(), models_request, &models).ok());
  EXPECT_EQ(models.models_size(), 1) << "a refused model was stored";
  // Bounded memory: refusing hundreds of MB of requests did not keep them.
  // Right after, the allocator may still hold them; the registry's
  // MemoryTrimmer (every 5 s) gives them back.
  ASSERT_GT(rss_before, 0);
  const int64_t rss_peak = RssKiB(stack_.registry_pid());
  EXPECT_LT(rss_peak - rss_before, 256 * 1024) << rss_before << " -> " << rss_peak << " KiB";
  int64_t rss_after = rss_peak;
  for (int i = 0; i < 60 && rss_after - rss_before >= 16 * 1024; ++i) {
    absl::SleepFor(absl::Milliseconds(250));
    rss_after = RssKiB(stack_.registry_pid());
  }
  std::printf("moend-registry RSS %lld -> %lld KiB, then %lld KiB\n", static_cast<long long>(rss_before),
              static_cast<long long>(rss_peak), static_cast<long long>(rss_after));
  EXPECT_LT(rss_after - rss_before, 24 * 1024)
      << "freed request memory stayed resident: " << rss_before << " -> " << rss_after << " KiB";
}

// Concurrency limits: streams beyond the configured caps are refused with
// RESOURCE_EXHAUSTED and a message naming the flag; closing one frees a slot.
TEST(LimitTest, WatchStreamsBeyondTheCapsAreRefusedClearly) {
  LoopbackStack stack;
  ASSERT_NO_FATAL_FAILURE(stack.StartRegistry({"--max-watch-streams", "3"}));
  ASSERT_EQ(stack.Publish(1), 1u);
  const std::string router_address =
      stack.StartRouter("127.0.0.1:0", nullptr, {"--max-watch-streams", "4"});
  ASSERT_FALSE(router_address.empty()) << stack.router().output();

  // The router: 4 plan streams held open (each has its first plan), the 5th
  // refused.
  auto router = v1::Router::NewStub(Channel(router_address));
  v1::WatchPlansRequest watch;
  watch.set_model("tinycode");
  watch.mutable_budget()->set_ratio(4);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::Plan>>> streams;
  for (int i = 0; i < 5; ++i) {
    contexts.push_back(Context());
    streams.push_back(router->WatchPlans(contexts.back().get(), watch));
    v1::Plan plan;
    if (i < 4) {
      ASSERT_TRUE(streams.back()->Read(&plan)) << "stream " << i;
      EXPECT_EQ(plan.table_version(), 1u);
    } else {
      EXPECT_FALSE(streams.back()->Read(&plan));
      const grpc::Status s = streams.back()->Finish();
      EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
      EXPECT_THAT(s.error_message(), HasSubstr("--max-watch-streams"));
    }
  }
  contexts[0]->TryCancel();
  streams[0]->Finish();
  streams.erase(streams.begin());
  contexts.erase(contexts.begin());
  grpc::Status opened;
  for (int attempt = 0; attempt < 100; ++attempt) {  // the slot frees asynchronously
    auto context = Context();
    auto stream = router->WatchPlans(context.get(), watch);
    v1::Plan plan;
    if (stream->Read(&plan)) {
      opened = grpc::Status::OK;
      context->TryCancel();
      stream->Finish();
      break;
    }
    opened = stream->Finish();
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(opened.ok()) << opened.error_message();

  // The registry: the router holds one version watch; two more fit, the
  // next is refused.
  auto registry = v1::Registry::NewStub(Channel(stack.registry_address()));
  v1::WatchModelVersionsRequest versions;
  std::vector<std::unique_ptr<grpc::ClientContext>> version_contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::ModelVersionEvent>>> version_streams;
  grpc::Status refused;
  for (int i = 0; i < 5 && refused.ok(); ++i) {
    version_contexts.push_back(Context());
    version_contexts.back()->set_deadline(std::chrono::system_clock::now() +
                                          std::chrono::seconds(3));
    version_streams.push_back(registry->WatchModelVersions(version_contexts.back().get(), versions));
    v1::ModelVersionEvent event;
    if (!version_streams.back()->Read(&event)) refused = version_streams.back()->Finish();
  }
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_THAT(refused.error_message(), HasSubstr("--max-watch-streams"));
  for (auto& context : version_contexts) context->TryCancel();
}

}  // namespace
}  // namespace moend

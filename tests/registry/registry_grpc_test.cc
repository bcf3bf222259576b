// The registry over gRPC on loopback (port 0), driven through RegistryClient.
#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "services/common/process.h"
#include "services/registry/proto_convert.h"
#include "services/registry/registry.h"
#include "services/registry/registry_client.h"
#include "services/registry/registry_service.h"
#include "tests/registry/registry_test_util.h"
#include "tests/storage/temp_dir.h"
#include "tests/util/child_process.h"

namespace moend::registry {
namespace {

using ::moend::testing::TempDir;
using testing::ExpectedTable;
using testing::ShardRows;
using testing::SmallTuples;
using testing::TinyConfigPath;

class RegistryGrpcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = storage::Store::Open({.path = dir_.Sub("db")});
    ASSERT_TRUE(store.ok()) << store.status();
    auto registry = Registry::Open(std::move(store).value(), {.lease_duration = absl::Seconds(30)});
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = std::move(registry).value();
    auto server = RegistryServer::Start(registry_.get(), {.listen_address = "127.0.0.1:0",
                                                          .watch_poll = absl::Milliseconds(50)});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value();
    ASSERT_GT(server_->port(), 0);
    auto client = RegistryClient::Connect({.target = server_->address()});
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(client).value();
  }
  void TearDown() override {
    client_.reset();
    if (server_) server_->Shutdown();
  }

  TempDir dir_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<RegistryServer> server_;
  std::unique_ptr<RegistryClient> client_;
};

// GET /healthz on the metrics port follows the gRPC health service (asked in
// process): the probe for servers whose gRPC port speaks TLS only.
TEST_F(RegistryGrpcTest, HealthzFollowsTheHealthServiceThroughShutdown) {
  auto metrics = rpc::MetricsServer::Start("127.0.0.1:0", std::make_shared<prometheus::Registry>());
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  const std::string addr = (*metrics)->address();
  EXPECT_NE(moend::testing::HttpGet(addr, "/healthz").find("503 Service Unavailable"), std::string::npos)
      << "no check set yet";
  EXPECT_TRUE(server_->Serving());
  (*metrics)->SetHealthCheck([s = server_.get()] { return s->Serving(); });
  const std::string serving = moend::testing::HttpGet(addr, "/healthz");
  EXPECT_NE(serving.find("200 OK"), std::string::npos) << serving;
  EXPECT_NE(serving.find("\r\n\r\nSERVING\n"), std::string::npos) << serving;

  server_->Shutdown();
  EXPECT_FALSE(server_->Serving());
  const std::string down = moend::testing::HttpGet(addr, "/healthz");
  EXPECT_NE(down.find("503 Service Unavailable"), std::string::npos) << down;
  EXPECT_NE(down.find("NOT_SERVING"), std::string::npos) << down;
  (*metrics)->SetHealthCheck(nullptr);
  EXPECT_NE(moend::testing::HttpGet(addr, "/healthz").find("503"), std::string::npos);
}

TEST_F(RegistryGrpcTest, WorkersCalibrateAJobEndToEnd) {
  auto model = client_->RegisterModelFromFile("tinycode", TinyConfigPath());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->shape.num_layers, 12);

  JobSpec spec;
  spec.model = "tinycode";
  spec.tuples = SmallTuples();
  spec.seq_len = 4096;
  spec.num_samples = 16;
  spec.samples_per_shard = 4;
  spec.layers_per_shard = 3;
  auto job = client_->SubmitJob(spec);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->spec.compression_point, 3840);

  // A watcher started before the job completes gets version 1.
  absl::StatusOr<VersionEvent> event = absl::UnknownError("not run");
  std::thread watcher([&] { event = client_->WaitForVersion("tinycode", 0, absl::Seconds(30)); });

  // Four workers, each with its own client, lease until nothing is left.
  std::atomic<int> reports{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&, w] {
      auto client = RegistryClient::Connect({.target = server_->address()});
      ASSERT_TRUE(client.ok());
      const std::string me = "worker-" + std::to_string(w);
      while (true) {
        auto lease = (*client)->LeaseShard(me);
        ASSERT_TRUE(lease.ok()) << lease.status();
        if (!lease->has_value()) break;
        ASSERT_TRUE((*client)->Heartbeat((*lease)->lease_id, me).ok());
        auto r = (*client)->ReportLease(**lease, ShardRows((*lease)->shard, 3));
        ASSERT_TRUE(r.ok()) << r.status();
        ++reports;
      }
    });
  }
  for (auto& t : workers) t.join();
  EXPECT_EQ(reports.load(), 16);

  auto done = client_->WaitForJob(job->spec.job_id, absl::Seconds(10));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state, JobState::kDone);
  EXPECT_EQ(done->table_version, 1u);
  watcher.join();
  ASSERT_TRUE(event.ok()) << event.status();
  EXPECT_EQ(event->model, "tinycode");
  EXPECT_EQ(event->version, 1u);

  auto table = client_->GetTable("tinycode");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->version, 1u);
  EXPECT_EQ(table->run_id, job->spec.job_id);
  auto expected = ExpectedTable(12, 16, 3);
  for (int l = 0; l < 12; ++l) {
    for (int t = 0; t < 3; ++t) EXPECT_NEAR(table->table.s[l][t], expected[l][t], 1e-12);
  }
  auto with_shards = client_->GetJob(job->spec.job_id, /*include_shards=*/true);
  ASSERT_TRUE(with_shards.ok());
  EXPECT_EQ(with_shards->shards.size(), 16u);
  EXPECT_EQ(with_shards->shards[15].state, ShardState::kDone);
}

// Per-head rows and signals cross the wire both ways (PublishTable,
// GetTable, ReportShard); a table message without them is per layer.
TEST_F(RegistryGrpcTest, HeadRowsAndSignalsCrossTheWire) {
  ASSERT_TRUE(client_->RegisterModelFromFile("tinycode", TinyConfigPath()).ok());
  const SensitivityTable heads = testing::TinyHeadTable(16);
  auto v = client_->PublishTable(heads);
  ASSERT_TRUE(v.ok()) << v.status();
  auto table = client_->GetTable("tinycode", *v);
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->table.s, heads.s);
  EXPECT_EQ(table->table.s_head, heads.s_head);
  EXPECT_EQ(table->table.signals, heads.signals);

  // The conversions themselves, and a message of an older sender.
  const v1::SensitivityTable wire = ToProto(heads);
  ASSERT_EQ(wire.s_head_size(), 12);
  ASSERT_EQ(wire.s_head(3).heads_size(), 2);
  EXPECT_EQ(wire.s_head(3).heads(1).s(2), heads.s_head[3][1][2]);
  EXPECT_EQ(wire.signals_size(), 2);
  v1::SensitivityTable old = wire;
  old.clear_s_head();
  old.clear_signals();
  v1::SensitivityTable old_back;
  ASSERT_TRUE(old_back.ParseFromString(old.SerializeAsString()));
  EXPECT_FALSE(FromProto(old_back).has_heads());
  EXPECT_EQ(FromProto(old_back).s, heads.s);

  PartialTable part;
  part.layer_begin = 2;
  part.layer_end = 4;
  part.samples = 5;
  part.tuples = SmallTuples();
  part.s = {heads.s[2], heads.s[3]};
  part.s_head = {heads.s_head[2], heads.s_head[3]};
  const PartialTable part_back = FromProto(ToProto(part));
  EXPECT_EQ(part_back.s, part.s);
  EXPECT_EQ(part_back.s_head, part.s_head);

  // A one-shard job reported over the wire with head rows.
  JobSpec spec;
  spec.model = "tinycode";
  spec.tuples = SmallTuples();
  spec.seq_len = 4096;
  spec.num_samples = 4;
  auto job = client_->SubmitJob(spec);
  ASSERT_TRUE(job.ok()) << job.status();
  auto lease = client_->LeaseShard("worker");
  ASSERT_TRUE(lease.ok() && lease->has_value()) << lease.status();
  ShardReport report = testing::ReportFor(**lease);
  report.table.s_head = testing::HeadRows(report.table.s, 2);
  auto result = client_->ReportShard(report);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_TRUE(result->job_done);
  auto merged = client_->GetTable("tinycode", result->model_version);
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ(merged->table.s_head, report.table.s_head);
}

TEST_F(RegistryGrpcTest, ErrorsKeepTheirCodeAndMessage) {
  ShardReport r;
  r.job_id = "job-424242";
  r.model = "tinycode";
  auto result = client_->ReportShard(r);
  EXPECT_TRUE(absl::IsNotFound(result.status())) << result.status();
  EXPECT_NE(result.status().message().find("job-424242"), std::string::npos);
  auto model = client_->GetModel("nope");
  EXPECT_TRUE(absl::IsNotFound(model.status()));
  auto bad = client_->RegisterModel("m", "{}");
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status()));
  EXPECT_NE(bad.status().message().find("num_hidden_layers"), std::string::npos);
}

TEST_F(RegistryGrpcTest, WatchTimesOutWithoutANewVersion) {
  ASSERT_TRUE(client_->RegisterModelFromFile("tinycode", TinyConfigPath()).ok());
  auto event = client_->WaitForVersion("tinycode", 0, absl::Milliseconds(300));
  EXPECT_TRUE(absl::IsDeadlineExceeded(event.status())) << event.status();
  auto unknown = client_->WaitForVersion("nope", 0, absl::Seconds(5));
  EXPECT_TRUE(absl::IsNotFound(unknown.status())) << unknown.status();
}

TEST_F(RegistryGrpcTest, ShutdownEndsOpenWatchStreams) {
  ASSERT_TRUE(client_->RegisterModelFromFile("tinycode", TinyConfigPath()).ok());
  absl::Status status;
  std::thread watcher(
      [&] { status = client_->WaitForVersion("tinycode", 0, absl::Seconds(30)).status(); });
  absl::SleepFor(absl::Milliseconds(200));
  const absl::Time start = absl::Now();
  server_->Shutdown(absl::Seconds(5));
  watcher.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_FALSE(status.ok());
}

// One long-lived WatchModelVersions stream per model serves every
// WaitForVersion call (the calls themselves open nothing).
TEST_F(RegistryGrpcTest, WaitForVersionKeepsOneStreamPerModel) {
  ASSERT_TRUE(client_->RegisterModelFromFile("tinycode", TinyConfigPath()).ok());
  ASSERT_TRUE(client_->RegisterModelFromFile("other", TinyConfigPath()).ok());
  EXPECT_EQ(server_->open_watch_streams(), 0);
  for (uint64_t v = 1; v <= 5; ++v) {
    ASSERT_EQ(*registry_->PublishTable(testing::TinyTable(static_cast<int64_t>(v))), v);
    auto event = client_->WaitForVersion("tinycode", v - 1, absl::Seconds(20));
    ASSERT_TRUE(event.ok()) << event.status();
    EXPECT_EQ(event->version, v);
    EXPECT_EQ(event->run_id, absl::StrCat("publish-tinycode-", v));
    EXPECT_EQ(server_->open_watch_streams(), 1) << "after call " << v;
  }
  // Versions the stream already delivered come back at once, oldest first.
  auto held = client_->WaitForVersion("tinycode", 2, absl::Milliseconds(1));
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(held->version, 3u);
  auto none = client_->WaitForVersion("other", 0, absl::Milliseconds(300));
  EXPECT_TRUE(absl::IsDeadlineExceeded(none.status())) << none.status();
  EXPECT_EQ(server_->open_watch_streams(), 2);
}

// When the registry goes away the watch says so at once; once a registry
// serves the address again, the same client's watch resumes from the last
// version it saw.
TEST(RegistryWatchTest, WaitForVersionResumesAfterTheRegistryRestarts) {
  TempDir dir;
  auto open = [&]() -> std::unique_ptr<Registry> {
    auto store = storage::Store::Open({.path = dir.Sub("db")});
    EXPECT_TRUE(store.ok()) << store.status();
    auto registry = Registry::Open(std::move(store).value(), {});
    EXPECT_TRUE(registry.ok()) << registry.status();
    return registry.ok() ? std::move(registry).value() : nullptr;
  };
  std::unique_ptr<Registry> registry = open();
  ASSERT_NE(registry, nullptr);
  auto server = RegistryServer::Start(registry.get(), {.watch_poll = absl::Milliseconds(50)});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  auto client = RegistryClient::Connect({.target = address,
                                         .watch_backoff_initial = absl::Milliseconds(50),
                                         .watch_backoff_max = absl::Milliseconds(200)});
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->RegisterModelFromFile("tinycode", TinyConfigPath()).ok());
  ASSERT_TRUE(registry->PublishTable(testing::TinyTable(1)).ok());
  auto first = (*client)->WaitForVersion("tinycode", 0, absl::Seconds(20));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->version, 1u);

  (*server)->Shutdown();
  const absl::Time start = absl::Now();
  auto down = (*client)->WaitForVersion("tinycode", 1, absl::Seconds(20));
  EXPECT_TRUE(absl::IsUnavailable(down.status())) << down.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "the watch waited out its timeout";
  server->reset();
  registry.reset();

  registry = open();
  ASSERT_NE(registry, nullptr);
  auto again = RegistryServer::Start(registry.get(), {.listen_address = address,
                                                      .watch_poll = absl::Milliseconds(50)});
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(*registry->PublishTable(testing::TinyTable(2)), 2u);
  absl::StatusOr<VersionEvent> resumed = absl::UnknownError("not asked");
  // While the stream is down a wait fails at once; the caller backs off, as
  // the router's watchers do, until the channel and the stream reconnect.
  for (int i = 0; i < 150 && !resumed.ok(); ++i) {
    resumed = (*client)->WaitForVersion("tinycode", 1, absl::Milliseconds(200));
    if (!resumed.ok()) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->version, 2u);
  EXPECT_EQ((*again)->open_watch_streams(), 1);
}

TEST_F(RegistryGrpcTest, ASecondServerOnABusyPortFailsNamingIt) {
  // Without SO_REUSEPORT a second server cannot bind the port and silently
  // take half of the first one's connections.
  auto second = RegistryServer::Start(registry_.get(), {.listen_address = server_->address()});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(second.status().message()).find(server_->address()), std::string::npos)
      << second.status();
}

TEST(RegistryClientTest, ConnectFailsClearlyWhenNothingListens) {
  auto client = RegistryClient::Connect(
      {.target = "127.0.0.1:1", .connect_timeout = absl::Milliseconds(200)});
  EXPECT_TRUE(absl::IsUnavailable(client.status())) << client.status();
}

}  // namespace
}  // namespace moend::registry

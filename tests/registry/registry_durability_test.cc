// Starts the real moend-registry binary, makes acknowledged writes, kills it
// with SIGKILL, restarts it on the same --db and checks that every
// acknowledged write is there.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "services/registry/registry_client.h"
#include "tests/registry/registry_test_util.h"
#include "tests/util/child_process.h"
#include "tests/storage/temp_dir.h"

namespace moend::registry {
namespace {

using ::moend::testing::TempDir;
using testing::ExpectedTable;
using testing::ShardRows;
using testing::SmallTuples;
using testing::TinyConfigPath;

// A moend-registry child process.
class RegistryProcess : public ::moend::testing::ChildProcess {
 public:
  explicit RegistryProcess(std::vector<std::string> args)
      : ChildProcess(MOEND_REGISTRY_BIN, std::move(args)) {}
};

std::unique_ptr<RegistryClient> ConnectTo(const std::string& address) {
  auto client = RegistryClient::Connect({.target = address});
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? std::move(client).value() : nullptr;
}

TEST(RegistryDurabilityTest, AcknowledgedWritesSurviveKill9) {
  TempDir dir;
  const std::string db = dir.Sub("db");
  std::string done_job, partial_job, live_lease_id;
  std::vector<Lease> done_leases;
  {
    RegistryProcess proc({"--db", db, "--listen", "127.0.0.1:0"});
    std::string address = proc.WaitForLine("listening on ", absl::Seconds(20));
    ASSERT_FALSE(address.empty()) << proc.output();
    auto client = ConnectTo(address);
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->RegisterModelFromFile("tinycode", TinyConfigPath()).ok());

    // Job 1 runs to completion: version 1.
    JobSpec spec{.model = "tinycode", .tuples = SmallTuples(), .seq_len = 4096,
                 .num_samples = 16, .samples_per_shard = 4};
    auto job1 = client->SubmitJob(spec);
    ASSERT_TRUE(job1.ok()) << job1.status();
    done_job = job1->spec.job_id;
    for (int i = 0; i < 4; ++i) {
      auto lease = client->LeaseShard("w1", done_job);
      ASSERT_TRUE(lease.ok() && lease->has_value());
      ASSERT_TRUE(client->ReportLease(**lease, ShardRows((*lease)->shard, 3)).ok());
    }
    // Job 2: two of four shards reported, a third leased.
    auto job2 = client->SubmitJob(spec);
    ASSERT_TRUE(job2.ok());
    partial_job = job2->spec.job_id;
    for (int i = 0; i < 2; ++i) {
      auto lease = client->LeaseShard("w2", partial_job);
      ASSERT_TRUE(lease.ok() && lease->has_value());
      ASSERT_TRUE(client->ReportLease(**lease, ShardRows((*lease)->shard, 3)).ok());
      done_leases.push_back(**lease);
    }
    auto live = client->LeaseShard("w3", partial_job);
    ASSERT_TRUE(live.ok() && live->has_value());
    live_lease_id = (*live)->lease_id;
    // The last acknowledged write, then kill -9 at once.
    int status = proc.Signal(SIGKILL, absl::Seconds(10));
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  }

  RegistryProcess proc({"--db", db, "--listen", "127.0.0.1:0"});
  std::string address = proc.WaitForLine("listening on ", absl::Seconds(20));
  ASSERT_FALSE(address.empty()) << proc.output();
  auto client = ConnectTo(address);
  ASSERT_NE(client, nullptr);

  auto model = client->GetModel("tinycode");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->version, 1u);
  auto table = client->GetTable("tinycode", 1);
  ASSERT_TRUE(table.ok()) << table.status();
  auto expected = ExpectedTable(12, 16, 3);
  for (int l = 0; l < 12; ++l) {
    for (int t = 0; t < 3; ++t) EXPECT_NEAR(table->table.s[l][t], expected[l][t], 1e-12);
  }
  EXPECT_EQ(client->GetJob(done_job)->state, JobState::kDone);

  auto partial = client->GetJob(partial_job, /*include_shards=*/true);
  ASSERT_TRUE(partial.ok());
  EXPECT_EQ(partial->shards_done, 2);
  EXPECT_EQ(partial->shards[2].lease_id, live_lease_id);
  EXPECT_TRUE(client->Heartbeat(live_lease_id, "w3").ok()) << "the live lease survived";
  // Reports acknowledged before the kill are duplicates now.
  auto dup = client->ReportLease(done_leases[0], ShardRows(done_leases[0].shard, 3));
  ASSERT_TRUE(dup.ok()) << dup.status();
  EXPECT_TRUE(dup->duplicate);
  // Finishing the job merges reports from before and after the kill.
  auto live = client->GetJob(partial_job, true);
  Lease l3;
  l3.lease_id = live_lease_id;
  l3.worker_id = "w3";
  l3.job_id = partial_job;
  l3.shard = live->shards[2];
  l3.spec = live->spec;
  ASSERT_TRUE(client->ReportLease(l3, ShardRows(l3.shard, 3)).ok());
  auto last = client->LeaseShard("w4", partial_job);
  ASSERT_TRUE(last.ok() && last->has_value());
  auto r = client->ReportLease(**last, ShardRows((*last)->shard, 3));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->job_done);
  EXPECT_EQ(r->model_version, 2u);

  // SIGTERM shuts down cleanly.
  int status = proc.Signal(SIGTERM, absl::Seconds(10));
  ASSERT_NE(status, -1) << "moend-registry did not exit on SIGTERM";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << proc.output();
}

TEST(RegistryDurabilityTest, UnusableDbFolderFailsWithAMessage) {
  TempDir dir;
  std::ofstream(dir.Sub("file")) << "x";
  RegistryProcess proc({"--db", dir.Sub("file"), "--listen", "127.0.0.1:0"});
  std::string line = proc.WaitForLine("moend-registry: ", absl::Seconds(20));
  EXPECT_NE(line.find("not a folder"), std::string::npos) << proc.output();
  int status = proc.WaitExit(absl::Seconds(10));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);
}

TEST(RegistryDurabilityTest, BadFlagsAreUsageErrors) {
  RegistryProcess proc({"--listen", "127.0.0.1:0"});
  std::string line = proc.WaitForLine("--db is required", absl::Seconds(20));
  int status = proc.WaitExit(absl::Seconds(10));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << proc.output();
}

}  // namespace
}  // namespace moend::registry

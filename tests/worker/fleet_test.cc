// The calibration fleet end to end on loopback: a registry and three workers
// (real binaries), a calibration submitted with moendctl; one worker and the
// registry are killed with SIGKILL mid-job. The merged table must equal a
// local calibration of the same samples.
#include <signal.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>

#include "runtime/model.h"
#include "core/sensitivity_table.h"
#include "services/registry/registry_client.h"
#include "tests/util/child_process.h"
#include "worker/calibrator.h"

namespace moend {
namespace {

namespace fs = std::filesystem;
using testing::ChildProcess;

constexpr int64_t kSeqLen = 384, kProbes = 128, kSamples = 3;

class FleetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moend_fleet_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<ChildProcess> StartRegistry(const std::string& listen, int n) {
    auto p = std::make_unique<ChildProcess>(
        MOEND_REGISTRY_BIN,
        std::vector<std::string>{"--db", (dir_ / "db").string(), "--listen", listen,
                                 "--lease-seconds", "2"},
        (dir_ / ("registry" + std::to_string(n) + ".log")).string());
    return p;
  }

  int64_t ShardsDone(registry::RegistryClient& client) {
    auto jobs = client.ListJobs("tinycode");
    if (!jobs.ok() || jobs->empty()) return -1;
    return jobs->front().shards_done;
  }

  bool WaitShards(registry::RegistryClient& client, int64_t n, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (ShardsDone(client) >= n) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  fs::path dir_;
};

TEST_F(FleetTest, SurvivesWorkerAndRegistryKillsAndMatchesLocalCalibration) {
  const std::string src = MOEND_SOURCE_DIR;
  auto registry = StartRegistry("127.0.0.1:0", 1);
  const std::string addr = registry->WaitForLine("listening on ", absl::Seconds(20));
  ASSERT_FALSE(addr.empty()) << registry->Log();

  std::vector<std::unique_ptr<ChildProcess>> workers;
  for (int i = 0; i < 3; ++i) {
    workers.push_back(std::make_unique<ChildProcess>(
        MOEND_WORKER_BIN,
        std::vector<std::string>{"--registry", addr, "--id", "w" + std::to_string(i), "--models",
                                 src + "/models", "--threads", "1"},
        (dir_ / ("worker" + std::to_string(i) + ".log")).string(),
        std::vector<std::string>{"OMP_NUM_THREADS=1"}));
  }
  const std::string table_path = (dir_ / "fleet.json").string();
  ChildProcess ctl(MOENDCTL_BIN,
                   {"calibrate", "--registry", addr, "--model", src + "/models/tinycode", "--data",
                    src + "/data/calibration.bin", "--seq-len", std::to_string(kSeqLen),
                    "--probes", std::to_string(kProbes), "--samples", std::to_string(kSamples),
                    "--samples-per-shard", "1", "--layers-per-shard", "3", "--out", table_path,
                    "--timeout", "600"},
                   (dir_ / "moendctl.log").string());

  registry::RegistryClientOptions options;
  options.target = addr;
  options.rpc_timeout = absl::Seconds(2);
  auto client = registry::RegistryClient::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();

  // Kill a worker once work is flowing, while it holds a lease: it is
  // stopped first (and a report it already sent given time to land), so that
  // it cannot finish the shard between the check and the kill.
  ASSERT_TRUE(WaitShards(**client, 2, absl::Seconds(120))) << ctl.Log();
  auto jobs = (*client)->ListJobs("tinycode");
  ASSERT_TRUE(jobs.ok() && jobs->size() == 1);
  const std::string job_id = jobs->front().spec.job_id;
  int64_t cut_shard = -1;
  for (int attempt = 0; attempt < 100 && cut_shard < 0; ++attempt) {
    ASSERT_EQ(::kill(workers[0]->pid(), SIGSTOP), 0);
    absl::SleepFor(absl::Milliseconds(500));
    auto job = (*client)->GetJob(job_id, /*include_shards=*/true);
    ASSERT_TRUE(job.ok()) << job.status();
    for (const registry::Shard& shard : job->shards) {
      if (shard.state == registry::ShardState::kLeased && shard.worker_id == "w0") {
        cut_shard = shard.index;
      }
    }
    if (cut_shard >= 0) {
      EXPECT_EQ(job->state, registry::JobState::kRunning);
      EXPECT_LT(job->shards_done, kSamples * 4);
    } else {
      ASSERT_EQ(::kill(workers[0]->pid(), SIGCONT), 0);
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  ASSERT_GE(cut_shard, 0) << "worker w0 never held a lease while the job ran";
  EXPECT_NE(workers[0]->Signal(SIGKILL, absl::Seconds(10)), -1);
  // Then the registry, once more shards are done, while the job still runs.
  ASSERT_TRUE(WaitShards(**client, 4, absl::Seconds(120))) << ctl.Log();
  const int64_t before_kill = ShardsDone(**client);
  EXPECT_NE(registry->Signal(SIGKILL, absl::Seconds(10)), -1);
  registry = StartRegistry(addr, 2);
  ASSERT_FALSE(registry->WaitForLine("listening on ", absl::Seconds(20)).empty())
      << registry->Log();
  // Every acknowledged report survived the kill.
  absl::SleepFor(absl::Milliseconds(200));
  int64_t after_restart = -1;
  for (int i = 0; i < 100 && after_restart < 0; ++i) {
    after_restart = ShardsDone(**client);
    if (after_restart < 0) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_GE(after_restart, before_kill);
  // Shards are only ever added, and each takes seconds: a job not done right
  // after the restart was not done when the registry was killed.
  EXPECT_LT(after_restart, kSamples * 4) << "the job had finished before the registry was killed";

  const int status = ctl.WaitExit(absl::Seconds(600));
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << ctl.Log();
  auto fleet = ReadSensitivityTable(table_path);
  ASSERT_TRUE(fleet.ok()) << fleet.status();
  auto job = (*client)->GetJob(job_id, /*include_shards=*/true);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->shards_done, kSamples * 4);
  // The shard the killed worker held was leased again and done by another.
  EXPECT_GE(job->shards[cut_shard].attempts, 2);
  EXPECT_NE(job->shards[cut_shard].worker_id, "w0");

  // The same samples calibrated here, single-threaded like the workers.
  auto model = Model::Load(src + "/models/tinycode", ModelOptions{1});
  ASSERT_TRUE(model.ok()) << model.status();
  auto seqs = worker::LoadCalibrationSequences(src + "/data/calibration.bin", kSeqLen, 0, kSamples);
  ASSERT_TRUE(seqs.ok());
  worker::CalibrationOptions copts;
  copts.probe_tokens = kProbes;
  std::vector<std::vector<std::vector<double>>> local_heads;
  auto local = worker::CalibrateLayers(**model, *seqs, 0, 12, copts, nullptr, &local_heads);
  ASSERT_TRUE(local.ok()) << local.status();
  ASSERT_EQ(fleet->num_layers, 12);
  ASSERT_EQ(fleet->samples, kSamples);
  ASSERT_EQ(fleet->tuples, copts.tuples);
  for (size_t l = 0; l < 12; ++l) {
    for (size_t t = 0; t < copts.tuples.size(); ++t) {
      EXPECT_NEAR(fleet->s[l][t], (*local)[l][t], 1e-9 * (*local)[l][t] + 1e-15)
          << "layer " << l << " tuple " << ToString(copts.tuples[t]);
    }
  }
  // Workers report per-head rows too, so the fleet's table routes per head.
  ASSERT_EQ(fleet->s_head.size(), 12u);
  for (size_t l = 0; l < 12; ++l) {
    ASSERT_EQ(fleet->s_head[l].size(), 2u);
    for (size_t h = 0; h < 2; ++h) {
      for (size_t t = 0; t < copts.tuples.size(); ++t) {
        EXPECT_NEAR(fleet->s_head[l][h][t], local_heads[l][h][t],
                    1e-9 * local_heads[l][h][t] + 1e-15)
            << "layer " << l << " head " << h << " tuple " << ToString(copts.tuples[t]);
      }
    }
  }

  // The default table (code + recall signals, measured locally) published on
  // top of the fleet's becomes the model's newest version, per-head rows and
  // signals included.
  const uint64_t fleet_version = job->table_version;
  ChildProcess publish(MOENDCTL_BIN, {"publish", "--registry", addr, "--table",
                                      src + "/data/tables/tinycode_code_recall.json"});
  const int published = publish.WaitExit(absl::Seconds(60));
  ASSERT_TRUE(WIFEXITED(published) && WEXITSTATUS(published) == 0) << publish.Log();
  EXPECT_NE(publish.Log().find("per-head rows"), std::string::npos) << publish.Log();
  auto want = ReadSensitivityTable(src + "/data/tables/tinycode_code_recall.json");
  ASSERT_TRUE(want.ok()) << want.status();
  auto stored = (*client)->GetTable("tinycode", 0);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_GT(stored->version, fleet_version);
  EXPECT_EQ(stored->table.s_head, want->s_head);
  EXPECT_EQ(stored->table.signals, want->signals);
  EXPECT_EQ(stored->table.s, want->s);
}

}  // namespace
}  // namespace moend

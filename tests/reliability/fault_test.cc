// Faults against the real binaries on loopback, each checked for "nothing
// lost": kill -9 of the registry during a storm of reports, a full disk and a
// read-only database folder (real ENOSPC / EROFS in a private mount
// namespace), a stuck (SIGSTOPped) worker whose lease expires, and a router
// killed under many watchers.
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "clients/plan_client/plan_client.h"
#include "core/model.h"
#include "core/sensitivity_table.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/registry/registry_client.h"
#include "storage/store.h"
#include "tests/registry/registry_test_util.h"
#include "tests/router/loopback_stack.h"
#include "tests/storage/temp_dir.h"
#include "tests/util/child_process.h"
#include "tests/util/mount_sandbox.h"
#include "worker/calibrator.h"

namespace moend {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using registry::JobSpec;
using registry::Lease;
using registry::RegistryClient;
using registry::ShardState;
using registry::testing::ExpectedTable;
using registry::testing::ShardRows;
using registry::testing::SmallTuples;
using registry::testing::TinyConfigPath;
using testing::ChildProcess;
using testing::MountSandbox;
using testing::TempDir;

constexpr absl::Duration kPatience = absl::Seconds(60);  // failure guard, not a goal

std::unique_ptr<ChildProcess> StartRegistry(const std::string& db, const std::string& listen,
                                            int lease_seconds = 60) {
  return std::make_unique<ChildProcess>(
      MOEND_REGISTRY_BIN, std::vector<std::string>{"--db", db, "--listen", listen,
                                                   "--lease-seconds",
                                                   std::to_string(lease_seconds)});
}

std::unique_ptr<RegistryClient> Connect(const std::string& address) {
  registry::RegistryClientOptions options;
  options.target = address;
  options.rpc_timeout = absl::Seconds(5);
  auto client = RegistryClient::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? std::move(client).value() : nullptr;
}

// A registry started on `db` with the shipped model registered and a job of
// `samples` samples x 3 layer ranges (one sample per shard, SmallTuples).
struct RegistryWithJob {
  std::unique_ptr<ChildProcess> process;
  std::string address;
  std::unique_ptr<RegistryClient> client;
  std::string job_id;
};

void StartRegistryWithJob(const std::string& db, int lease_seconds, int64_t samples,
                          RegistryWithJob* out) {
  out->process = StartRegistry(db, "127.0.0.1:0", lease_seconds);
  out->address = out->process->WaitForLine("listening on ", kPatience);
  ASSERT_FALSE(out->address.empty()) << out->process->output();
  out->client = Connect(out->address);
  ASSERT_NE(out->client, nullptr);
  ASSERT_TRUE(out->client->RegisterModelFromFile("tinycode", TinyConfigPath()).ok());
  auto job = out->client->SubmitJob({.model = "tinycode", .tuples = SmallTuples(), .seq_len = 512,
                                     .num_samples = samples, .samples_per_shard = 1,
                                     .layers_per_shard = 4});
  ASSERT_TRUE(job.ok()) << job.status();
  out->job_id = job->spec.job_id;
}

// Leases and reports shards of `job_id` until none is left to lease; returns
// the shard indexes this call reported.
std::vector<int64_t> FinishJob(RegistryClient& client, const std::string& job_id,
                               const std::string& worker, size_t tuples) {
  std::vector<int64_t> reported;
  const absl::Time deadline = absl::Now() + kPatience;
  while (absl::Now() < deadline) {
    auto job = client.GetJob(job_id);
    if (!job.ok() || job->state == registry::JobState::kDone) break;
    auto lease = client.LeaseShard(worker, job_id);
    if (!lease.ok()) break;
    if (!lease->has_value()) {  // leases of dead clients not yet expired
      absl::SleepFor(absl::Milliseconds(100));
      continue;
    }
    auto r = client.ReportLease(**lease, ShardRows((*lease)->shard, tuples));
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) reported.push_back((*lease)->shard.index);
  }
  return reported;
}

void ExpectTable(RegistryClient& client, int64_t samples, uint64_t version) {
  auto model = client.GetModel("tinycode");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->version, version) << "one merge, one version bump";
  auto table = client.GetTable("tinycode", version);
  ASSERT_TRUE(table.ok()) << table.status();
  const auto expected = ExpectedTable(12, samples, SmallTuples().size());
  ASSERT_EQ(table->table.s.size(), expected.size());
  for (size_t l = 0; l < expected.size(); ++l) {
    for (size_t t = 0; t < expected[l].size(); ++t) {
      EXPECT_NEAR(table->table.s[l][t], expected[l][t], 1e-12) << "layer " << l << " tuple " << t;
    }
  }
}

// --- kill -9 during a storm of reports ---------------------------------------

TEST(FaultTest, RegistryKilledDuringAReportStormLosesNoAcknowledgedReport) {
  TempDir dir;
  const std::string db = dir.Sub("db");
  constexpr int64_t kSamples = 40;  // x 3 layer ranges = 120 shards
  constexpr int kWorkers = 6;
  std::string job_id;
  std::map<int64_t, Lease> acked;  // shard index -> the lease it was reported under
  {
    RegistryWithJob started;
    ASSERT_NO_FATAL_FAILURE(StartRegistryWithJob(db, /*lease_seconds=*/1, kSamples, &started));
    auto& registry = started.process;
    const std::string& address = started.address;
    job_id = started.job_id;

    absl::Mutex mu;
    std::atomic<int> failures{0};
    std::vector<std::thread> storm;
    for (int w = 0; w < kWorkers; ++w) {
      storm.emplace_back([&, w] {
        auto client = Connect(address);
        if (client == nullptr) return;
        while (true) {
          auto lease = client->LeaseShard("storm" + std::to_string(w), job_id);
          if (!lease.ok() || !lease->has_value()) break;
          auto r = client->ReportLease(**lease, ShardRows((*lease)->shard, SmallTuples().size()));
          if (!r.ok()) break;
          absl::MutexLock lock(&mu);
          acked[(*lease)->shard.index] = **lease;
        }
        ++failures;
      });
    }
    // Kill mid-storm, once a third of the shards are acknowledged.
    const absl::Time deadline = absl::Now() + kPatience;
    while (absl::Now() < deadline) {
      {
        absl::MutexLock lock(&mu);
        if (acked.size() >= 40) break;
      }
      absl::SleepFor(absl::Milliseconds(1));
    }
    const int status = registry->Signal(SIGKILL, absl::Seconds(10));
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    for (std::thread& t : storm) t.join();
    EXPECT_EQ(failures.load(), kWorkers);
    ASSERT_GE(acked.size(), 40u);
    ASSERT_LT(acked.size(), 120u) << "the kill came too late to interrupt the storm";
  }

  auto registry = StartRegistry(db, "127.0.0.1:0", 1);
  const std::string address = registry->WaitForLine("listening on ", kPatience);
  ASSERT_FALSE(address.empty()) << registry->output();
  auto client = Connect(address);
  ASSERT_NE(client, nullptr);
  auto job = client->GetJob(job_id, /*include_shards=*/true);
  ASSERT_TRUE(job.ok()) << job.status();
  // Every acknowledged report is there (a report that landed but whose
  // answer was lost in the kill may be there too).
  for (const auto& [index, lease] : acked) {
    EXPECT_EQ(job->shards[index].state, ShardState::kDone) << "acknowledged shard " << index;
  }
  const int64_t done_after_restart = job->shards_done;
  EXPECT_GE(done_after_restart, static_cast<int64_t>(acked.size()));
  EXPECT_LE(done_after_restart, static_cast<int64_t>(acked.size()) + kWorkers);
  // No duplicates: reporting an acknowledged shard again changes nothing.
  for (const auto& [index, lease] : acked) {
    auto again = client->ReportLease(lease, ShardRows(lease.shard, SmallTuples().size()));
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_TRUE(again->duplicate) << "shard " << index;
  }
  EXPECT_EQ(client->GetJob(job_id)->shards_done, done_after_restart);
  // The rest of the job (leases held by the killed clients lapse after 1 s),
  // then the merge equals the direct computation over all samples.
  const std::vector<int64_t> rest = FinishJob(*client, job_id, "finisher", SmallTuples().size());
  EXPECT_EQ(static_cast<int64_t>(rest.size()), 120 - done_after_restart);
  auto final_job = client->GetJob(job_id);
  ASSERT_TRUE(final_job.ok());
  EXPECT_EQ(final_job->state, registry::JobState::kDone);
  EXPECT_EQ(final_job->shards_done, 120);
  ExpectTable(*client, kSamples, 1);
}

// --- a full disk -----------------------------------------------------------------

// Fills `dir` (a small tmpfs) until ENOSPC; returns the filler's path.
std::string FillDisk(const std::string& dir) {
  const std::string path = dir + "/filler";
  std::ofstream out(path, std::ios::binary);
  const std::string block(1 << 16, 'x');
  while (out.write(block.data(), static_cast<std::streamsize>(block.size()))) out.flush();
  return path;
}

// A fresh temporary folder with a tmpfs of `bytes` on it (a disk that really
// fills up), unmounted before the folder is removed. Needs MountSandbox::Enter.
class SmallDisk {
 public:
  explicit SmallDisk(int64_t bytes) : path_(dir_.Sub("disk")) {
    fs::create_directories(path_);
    error_ = MountSandbox::MountTmpfs(path_, bytes);
    if (error_.empty()) unmount_.emplace(path_);
  }
  const std::string& path() const { return path_; }
  const std::string& error() const { return error_; }  // "" when mounted

 private:
  TempDir dir_;
  std::string path_;
  std::string error_;
  std::optional<testing::ScopedUnmount> unmount_;
};

TEST(FaultTest, FullDiskRefusesWritesClearlyAndResumesWithNothingLost) {
  if (std::string why = MountSandbox::Enter(); !why.empty()) {
    GTEST_SKIP() << "cannot make a private mount namespace for a real full disk: " << why;
  }
  SmallDisk small(64 << 20);
  ASSERT_EQ(small.error(), "");
  const std::string& disk = small.path();
  const std::string db = disk + "/db";
  constexpr int64_t kSamples = 12;  // x 3 layer ranges = 36 shards
  std::string job_id;
  std::vector<int64_t> acked;
  {
    RegistryWithJob started;
    ASSERT_NO_FATAL_FAILURE(StartRegistryWithJob(db, /*lease_seconds=*/60, kSamples, &started));
    auto& registry = started.process;
    auto& client = started.client;
    job_id = started.job_id;
    auto report_one = [&](const std::string& worker) -> absl::Status {
      auto lease = client->LeaseShard(worker, job_id);
      if (!lease.ok()) return lease.status();
      if (!lease->has_value()) return absl::NotFoundError("nothing to lease");
      auto r = client->ReportLease(**lease, ShardRows((*lease)->shard, SmallTuples().size()));
      if (r.ok()) acked.push_back((*lease)->shard.index);
      return r.status();
    };
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(report_one("before").ok());

    // The disk fills up: writes fail with a clear status, reads go on.
    const std::string filler = FillDisk(disk);
    absl::Status full;
    for (int i = 0; i < 20 && full.ok(); ++i) full = report_one("during");
    ASSERT_FALSE(full.ok()) << "writes kept succeeding on a full disk";
    EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
    EXPECT_THAT(std::string(full.message()), HasSubstr("disk is full")) << full;
    auto during = client->GetJob(job_id);
    ASSERT_TRUE(during.ok()) << during.status() << "\n" << registry->output();
    EXPECT_EQ(during->shards_done, static_cast<int64_t>(acked.size()));
    EXPECT_TRUE(client->GetModel("tinycode").ok());
    EXPECT_EQ(registry->WaitExit(absl::ZeroDuration()), -1) << "the registry exited:\n"
                                                            << registry->output();

    // Space comes back: writes resume without a restart.
    fs::remove(filler);
    absl::Status resumed = absl::UnknownError("not tried");
    for (int i = 0; i < 50 && !resumed.ok(); ++i) {
      resumed = report_one("after");
      if (!resumed.ok()) absl::SleepFor(absl::Milliseconds(100));
    }
    EXPECT_TRUE(resumed.ok()) << "writes did not resume after space was freed: " << resumed;
    ASSERT_EQ(registry->Signal(SIGKILL, absl::Seconds(10)) & 0x7f, SIGKILL);
  }
  // After kill -9: the database opens, every acknowledged report is there
  // and the job completes with the exact merge.
  auto registry = StartRegistry(db, "127.0.0.1:0", 1);
  const std::string address = registry->WaitForLine("listening on ", kPatience);
  ASSERT_FALSE(address.empty()) << registry->output();
  auto client = Connect(address);
  ASSERT_NE(client, nullptr);
  auto job = client->GetJob(job_id, true);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->shards_done, static_cast<int64_t>(acked.size()));
  for (int64_t index : acked) EXPECT_EQ(job->shards[index].state, ShardState::kDone);
  FinishJob(*client, job_id, "finisher", SmallTuples().size());
  ExpectTable(*client, kSamples, 1);
}

// The store on its own (no registry lock around it): eight threads write
// while the disk fills, keep writing while it is full, and go on after space
// comes back. Nothing crashes (Debian's RocksDB asserts), writes on a full
// disk fail with ResourceExhausted, recovery happens under concurrent writers,
// and every acknowledged write is in the database when it is opened again.
TEST(FaultTest, StoreWithConcurrentWritersOnAFullDiskLosesNothingAcknowledged) {
  if (std::string why = MountSandbox::Enter(); !why.empty()) {
    GTEST_SKIP() << "cannot make a private mount namespace for a real full disk: " << why;
  }
  SmallDisk small(24 << 20);
  ASSERT_EQ(small.error(), "");
  const std::string& disk = small.path();
  const std::string db = disk + "/db";
  auto value_of = [](const std::string& key) { return key + std::string(16 << 10, 'v'); };

  constexpr int kThreads = 8;
  std::vector<std::vector<std::string>> acked(kThreads);
  std::atomic<int> phase{0};  // 0 filling, 1 full (refusals counted), 2 space back
  std::atomic<int> refused{0}, resumed{0};
  std::vector<std::string> bad_codes;
  absl::Mutex bad_mu;
  {
    auto store = storage::Store::Open({.path = db});
    ASSERT_TRUE(store.ok()) << store.status();
    std::vector<std::thread> writers;
    for (int t = 0; t < kThreads; ++t) {
      writers.emplace_back([&, t] {
        const absl::Time deadline = absl::Now() + absl::Seconds(60);
        for (int n = 0; absl::Now() < deadline; ++n) {
          const int seen = phase.load();
          const std::string key = absl::StrCat("w", t, "-", n);
          absl::Status s = (*store)->Put(storage::Column::kJobs, key, value_of(key));
          if (s.ok()) {
            acked[t].push_back(key);
            if (seen == 2 && ++resumed >= 4 * kThreads) return;
          } else {
            if (s.code() != absl::StatusCode::kResourceExhausted) {
              absl::MutexLock lock(&bad_mu);
              bad_codes.push_back(s.ToString());
            }
            ++refused;
            absl::SleepFor(absl::Milliseconds(5));
          }
        }
      });
    }
    absl::SleepFor(absl::Milliseconds(200));
    const std::string filler = FillDisk(disk);
    phase = 1;
    for (int i = 0; i < 500 && refused.load() < 4 * kThreads; ++i) absl::SleepFor(absl::Milliseconds(10));
    EXPECT_GE(refused.load(), 4 * kThreads) << "writes kept succeeding on a full disk";
    fs::remove(filler);
    phase = 2;
    for (std::thread& w : writers) w.join();
    EXPECT_GE(resumed.load(), 4 * kThreads) << "writes did not resume after space came back";
  }
  EXPECT_TRUE(bad_codes.empty()) << bad_codes.size() << " writes failed otherwise, e.g. " << bad_codes.front();
  auto reopened = storage::Store::Open({.path = db});
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  size_t total = 0;
  for (int t = 0; t < kThreads; ++t) {
    for (const std::string& key : acked[t]) {
      auto v = (*reopened)->Get(storage::Column::kJobs, key);
      ASSERT_TRUE(v.ok()) << "acknowledged write " << key << " lost: " << v.status();
      EXPECT_EQ(*v, value_of(key)) << key;
      ++total;
    }
  }
  EXPECT_GT(total, 0u);
  std::printf("store on a full disk: %zu writes acknowledged and found again, %d refused\n", total,
              refused.load());
}

// --- a read-only database folder ---------------------------------------------------

TEST(FaultTest, ReadOnlyDatabaseFolderFailsStartupClearlyAndKeepsTheData) {
  if (std::string why = MountSandbox::Enter(); !why.empty()) {
    GTEST_SKIP() << "cannot make a private mount namespace for a read-only mount: " << why;
  }
  TempDir dir;
  const std::string db = dir.Sub("db");
  {
    auto registry = StartRegistry(db, "127.0.0.1:0");
    const std::string address = registry->WaitForLine("listening on ", kPatience);
    ASSERT_FALSE(address.empty()) << registry->output();
    auto client = Connect(address);
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->RegisterModelFromFile("tinycode", TinyConfigPath()).ok());
    ASSERT_EQ(client->PublishTable(router::testing::MakeTable("tinycode", 1)).value_or(0), 1u);
    ASSERT_NE(registry->Signal(SIGTERM, absl::Seconds(10)), -1);
  }
  const std::string ro = dir.Sub("ro");
  fs::create_directories(ro);
  ASSERT_EQ(MountSandbox::BindReadOnly(db, ro), "");
  testing::ScopedUnmount unmount(ro);
  {
    auto registry = StartRegistry(ro, "127.0.0.1:0");
    const std::string line = registry->WaitForLine("moend-registry: ", kPatience);
    EXPECT_THAT(line, HasSubstr(ro));
    EXPECT_THAT(line, HasSubstr("Read-only file system")) << registry->output();
    const int status = registry->WaitExit(kPatience);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << registry->output();
  }
  // The same data, writable again: untouched.
  auto registry = StartRegistry(db, "127.0.0.1:0");
  const std::string address = registry->WaitForLine("listening on ", kPatience);
  ASSERT_FALSE(address.empty()) << registry->output();
  auto client = Connect(address);
  ASSERT_NE(client, nullptr);
  auto table = client->GetTable("tinycode", 1);
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->table.s, router::testing::MakeTable("tinycode", 1).s);
}

// --- a stuck worker ------------------------------------------------------------------

TEST(FaultTest, StuckWorkersLeaseExpiresAndAnotherWorkerFinishesTheShard) {
  TempDir dir;
  const std::string src = MOEND_SOURCE_DIR;
  auto registry = StartRegistry(dir.Sub("db"), "127.0.0.1:0", /*lease_seconds=*/2);
  const std::string address = registry->WaitForLine("listening on ", kPatience);
  ASSERT_FALSE(address.empty()) << registry->output();
  auto client = Connect(address);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->RegisterModelFromFile("tinycode", TinyConfigPath()).ok());
  // A real-length sequence, so the stuck worker is still computing when stopped.
  constexpr int64_t kSeqLen = 4096, kProbes = 256;
  const std::vector<CompressionTuple> tuples = SmallTuples();
  auto job = client->SubmitJob({.model = "tinycode", .tuples = tuples, .seq_len = kSeqLen,
                                .compression_point = kSeqLen - kProbes, .num_samples = 1,
                                .dataset = src + "/data/calibration.bin"});
  ASSERT_TRUE(job.ok()) << job.status();
  const std::string job_id = job->spec.job_id;

  auto start_worker = [&](const std::string& id) {
    return std::make_unique<ChildProcess>(
        MOEND_WORKER_BIN,
        std::vector<std::string>{"--registry", address, "--id", id, "--models", src + "/models",
                                 "--threads", "1"},
        dir.Sub(id + ".log"), std::vector<std::string>{"OMP_NUM_THREADS=1"});
  };
  // Worker A leases the only shard and hangs (SIGSTOP: no heartbeat, no report).
  auto stuck = start_worker("stuck");
  const absl::Time deadline = absl::Now() + kPatience;
  while (absl::Now() < deadline) {
    auto j = client->GetJob(job_id, true);
    if (j.ok() && j->shards[0].state == ShardState::kLeased) break;
    absl::SleepFor(absl::Milliseconds(2));
  }
  ASSERT_EQ(::kill(stuck->pid(), SIGSTOP), 0);
  ASSERT_EQ(client->GetJob(job_id, true)->shards[0].worker_id, "stuck");

  // Worker B gets the shard once the lease lapses and finishes the job.
  auto healthy = start_worker("healthy");
  auto done = client->WaitForJob(job_id, kPatience);
  ASSERT_TRUE(done.ok()) << done.status() << "\n" << healthy->output();
  auto finished = client->GetJob(job_id, true);
  ASSERT_TRUE(finished.ok());
  EXPECT_EQ(finished->shards[0].worker_id, "healthy");
  EXPECT_EQ(finished->shards[0].attempts, 2);

  // The stuck worker wakes up: its late report is refused, nothing changes,
  // and it goes on serving.
  auto before = client->GetTable("tinycode", 1);
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_EQ(::kill(stuck->pid(), SIGCONT), 0);
  const std::string refused =
      stuck->WaitForLine(absl::StrCat("shard 0 of ", job_id, " failed: "), kPatience);
  EXPECT_THAT(refused, ::testing::AnyOf(HasSubstr("lost"), HasSubstr("superseded"),
                                        HasSubstr("already done")))
      << stuck->output();
  EXPECT_EQ(stuck->WaitExit(absl::Seconds(1)), -1) << "the stuck worker exited:\n"
                                                     << stuck->output();
  auto model = client->GetModel("tinycode");
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(model->version, 1u);
  auto after = client->GetTable("tinycode", 1);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->table.s, before->table.s);

  // And the table is the local calibration of the same sample.
  auto local_model = Model::Load(src + "/models/tinycode", ModelOptions{1});
  ASSERT_TRUE(local_model.ok()) << local_model.status();
  auto seqs = worker::LoadCalibrationSequences(src + "/data/calibration.bin", kSeqLen, 0, 1);
  ASSERT_TRUE(seqs.ok());
  worker::CalibrationOptions options;
  options.tuples = tuples;
  options.probe_tokens = kProbes;
  auto local = worker::CalibrateLayers(**local_model, *seqs, 0, 12, options);
  ASSERT_TRUE(local.ok()) << local.status();
  for (size_t l = 0; l < 12; ++l) {
    for (size_t t = 0; t < tuples.size(); ++t) {
      EXPECT_NEAR(after->table.s[l][t], (*local)[l][t], 1e-9 * (*local)[l][t] + 1e-15);
    }
  }
}

// --- a router killed under many watchers ------------------------------------------------

TEST(FaultTest, RouterKilledUnderManyWatchersAllReconnectToTheCurrentPlan) {
  router::testing::LoopbackStack stack;
  ASSERT_NO_FATAL_FAILURE(stack.StartRegistry());
  ASSERT_EQ(stack.Publish(1), 1u);
  const std::string address = stack.StartRouter();
  ASSERT_FALSE(address.empty()) << stack.router().output();

  // 20 nodes (one channel each), 10 watches per node over different budgets.
  constexpr int kNodes = 20, kWatchesPerNode = 10;
  std::vector<std::unique_ptr<plan_client::PlanClient>> nodes;
  std::vector<std::unique_ptr<plan_client::PlanWatch>> watches;
  for (int n = 0; n < kNodes; ++n) {
    auto node = plan_client::PlanClient::Connect({.target = address,
                                                  .backoff_initial = absl::Milliseconds(50),
                                                  .backoff_max = absl::Milliseconds(500)});
    ASSERT_TRUE(node.ok()) << node.status();
    for (int w = 0; w < kWatchesPerNode; ++w) {
      auto watch = (*node)->Watch("tinycode", Budget::Ratio(2.0 + w), w % 2 ? "exact" : "greedy");
      ASSERT_TRUE(watch.ok()) << watch.status();
      watches.push_back(std::move(watch).value());
    }
    nodes.push_back(std::move(node).value());
  }
  for (auto& watch : watches) {
    auto plan = watch->WaitForNewer(0, kPatience);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ((*plan)->table_version, 1u);
  }

  stack.DropRouter();  // kill -9
  ASSERT_EQ(stack.Publish(2), 2u);
  ASSERT_EQ(stack.StartRouter(address), address) << stack.router().output();
  for (auto& watch : watches) {
    auto plan = watch->WaitForNewer(1, kPatience);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ((*plan)->table_version, 2u);
    EXPECT_EQ(watch->streams(), 2);
  }
}

}  // namespace
}  // namespace moend

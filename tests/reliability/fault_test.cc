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
#include <functional>
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
#include "core/compression.h"
#include "runtime/model.h"
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
#include "tests/util/wait.h"
#include "worker/calibrator.h"

namespace moend {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
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
                          RegistryWithJob* out,
                          const std::vector<CompressionTuple>& tuples = SmallTuples(),
                          int64_t layers_per_shard = 4) {
  out->process = StartRegistry(db, "127.0.0.1:0", lease_seconds);
  out->address = out->process->WaitForLine("listening on ", kPatience);
  ASSERT_FALSE(out->address.empty()) << out->process->output();
  out->client = Connect(out->address);
  ASSERT_NE(out->client, nullptr);
  ASSERT_TRUE(out->client->RegisterModelFromFile("tinycode", TinyConfigPath()).ok());
  auto job = out->client->SubmitJob({.model = "tinycode", .tuples = tuples, .seq_len = 512,
                                     .num_samples = samples, .samples_per_shard = 1,
                                     .layers_per_shard = layers_per_shard});
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

void ExpectTable(RegistryClient& client, int64_t samples, uint64_t version,
                 size_t num_tuples = SmallTuples().size()) {
  auto model = client.GetModel("tinycode");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->version, version) << "one merge, one version bump";
  auto table = client.GetTable("tinycode", version);
  ASSERT_TRUE(table.ok()) << table.status();
  const auto expected = ExpectedTable(12, samples, num_tuples);
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
    // Leases long enough that none lapses mid-storm on a loaded machine; the
    // leases the kill cut off are finished below by their holders.
    ASSERT_NO_FATAL_FAILURE(StartRegistryWithJob(db, /*lease_seconds=*/600, kSamples, &started));
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

  auto registry = StartRegistry(db, "127.0.0.1:0", 600);
  const std::string address = registry->WaitForLine("listening on ", kPatience);
  ASSERT_FALSE(address.empty()) << registry->output();
  auto client = Connect(address);
  ASSERT_NE(client, nullptr);
  auto job = client->GetJob(job_id, /*include_shards=*/true);
  ASSERT_TRUE(job.ok()) << job.status();
  // No lease lapsed during the storm: each shard was leased once.
  for (const registry::Shard& shard : job->shards) {
    EXPECT_LE(shard.attempts, 1) << "shard " << shard.index << " was leased again";
  }
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
  // The leases the kill cut off (at most one per storm client: its report,
  // or a lease whose answer was lost) are still held after the restart; their
  // holders report them, then the rest of the job is leased and reported, and
  // the merge equals the direct computation over all samples.
  int64_t cut_off = 0;
  for (const registry::Shard& shard : job->shards) {
    if (shard.state != ShardState::kLeased) continue;
    ++cut_off;
    Lease lease{.lease_id = shard.lease_id, .worker_id = shard.worker_id, .job_id = job_id,
                .shard = shard, .spec = job->spec};
    auto r = client->ReportLease(lease, ShardRows(shard, SmallTuples().size()));
    ASSERT_TRUE(r.ok()) << "the holder of lease " << shard.lease_id << ": " << r.status();
    EXPECT_FALSE(r->duplicate);
  }
  EXPECT_LE(cut_off, kWorkers);
  const std::vector<int64_t> rest = FinishJob(*client, job_id, "finisher", SmallTuples().size());
  EXPECT_EQ(static_cast<int64_t>(rest.size()), 120 - done_after_restart - cut_off);
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

// In a full-disk test: enters the private mount namespace and mounts
// SmallDisk `name` of `bytes`; skips the test, saying why, where that is not
// possible.
#define MOUNT_SMALL_DISK_OR_SKIP(name, bytes)                                                 \
  if (std::string why = MountSandbox::Enter(); !why.empty()) {                                \
    GTEST_SKIP() << "cannot make a private mount namespace for a real full disk: " << why;   \
  }                                                                                           \
  SmallDisk name(bytes);                                                                      \
  ASSERT_EQ(name.error(), "")

// The registry on a full disk. The write that meets it is a report (the
// largest record a worker sends), made under a lease taken before the disk
// filled: the default 112-tuple grid and shards of all 12 layers make each
// report about 11 KiB, more than the few bytes left in the WAL's last page,
// so it cannot land. The 64 MiB disk is smaller than RocksDB's WAL
// preallocation (1.1 x the 64 MiB write buffer), which therefore fails and
// leaves no preallocated room for the report either.
TEST(FaultTest, FullDiskRefusesWritesClearlyAndResumesWithNothingLost) {
  MOUNT_SMALL_DISK_OR_SKIP(small, 64 << 20);
  const std::string& disk = small.path();
  const std::string db = disk + "/db";
  constexpr int64_t kSamples = 16;  // x 1 layer range = 16 shards
  const std::vector<CompressionTuple> tuples = TupleGrid::Default().Tuples();
  std::string job_id;
  std::vector<int64_t> acked;
  {
    RegistryWithJob started;
    ASSERT_NO_FATAL_FAILURE(StartRegistryWithJob(db, /*lease_seconds=*/60, kSamples, &started,
                                                 tuples, /*layers_per_shard=*/12));
    auto& registry = started.process;
    auto& client = started.client;
    job_id = started.job_id;
    auto lease_one = [&](const std::string& worker) -> Lease {
      auto lease = client->LeaseShard(worker, job_id);
      EXPECT_TRUE(lease.ok() && lease->has_value()) << lease.status();
      return lease.ok() && lease->has_value() ? **lease : Lease{};
    };
    auto report = [&](const Lease& lease) {
      auto r = client->ReportLease(lease, ShardRows(lease.shard, tuples.size()));
      if (r.ok()) acked.push_back(lease.shard.index);
      return r.status();
    };
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(report(lease_one("before")).ok());

    // Leased, then the disk fills up, then the report: refused clearly.
    const Lease held = lease_one("during");
    ASSERT_FALSE(held.lease_id.empty());
    const std::string filler = FillDisk(disk);
    const absl::Status full = report(held);
    ASSERT_FALSE(full.ok()) << "a report was stored on a full disk";
    EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
    EXPECT_THAT(std::string(full.message()), HasSubstr("disk is full")) << full;
    EXPECT_THAT(std::string(full.message()), HasSubstr("free at least 1 MiB on the disk")) << full;
    // Reads go on, and show the refused report was not stored.
    auto during = client->GetJob(job_id, /*include_shards=*/true);
    ASSERT_TRUE(during.ok()) << during.status() << "\n" << registry->output();
    EXPECT_EQ(during->shards_done, 10);
    EXPECT_EQ(during->shards[held.shard.index].state, ShardState::kLeased);
    EXPECT_TRUE(client->GetModel("tinycode").ok());
    EXPECT_EQ(registry->WaitExit(absl::ZeroDuration()), -1) << "the registry exited:\n"
                                                            << registry->output();

    // Space comes back: the same report goes through without a restart.
    fs::remove(filler);
    absl::Status resumed = absl::UnknownError("not tried");
    for (int i = 0; i < 50 && !resumed.ok(); ++i) {
      resumed = report(held);
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
  EXPECT_EQ(acked.size(), 11u);
  EXPECT_EQ(job->shards_done, static_cast<int64_t>(acked.size()));
  for (int64_t index : acked) EXPECT_EQ(job->shards[index].state, ShardState::kDone);
  FinishJob(*client, job_id, "finisher", tuples.size());
  ExpectTable(*client, kSamples, 1, tuples.size());
}

// A value of `bytes` pseudo-random bytes after `key`: incompressible, like
// the registry's serialized doubles, so that what the store writes to disk is
// as large as what it was given (RocksDB compresses its table files).
std::string IncompressibleValue(const std::string& key, size_t bytes) {
  std::string value = key;
  uint64_t x = std::hash<std::string>()(key) | 1;
  while (value.size() < key.size() + bytes) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    value.push_back(static_cast<char>(x));
  }
  return value;
}

// Writes a file of `bytes` (real blocks, not sparse); "" or what failed.
std::string WriteBallast(const std::string& path, int64_t bytes) {
  std::ofstream out(path, std::ios::binary);
  const std::string block(1 << 16, 'b');
  for (int64_t done = 0; done < bytes && out; done += static_cast<int64_t>(block.size())) {
    out.write(block.data(), static_cast<std::streamsize>(block.size()));
  }
  out.flush();
  return out ? "" : "writing " + path + " failed";
}

// The store on its own (no registry lock around it): eight threads write a
// fixed number of records, a filler takes the rest of the disk, each thread
// writes until it was refused a fixed number of times, the filler goes, and
// each writes until a fixed number of writes went through again. Nothing
// crashes (Debian's RocksDB asserts), writes on a full disk fail with
// ResourceExhausted, recovery happens under concurrent writers, and every
// acknowledged write is in the database when it is opened again. What is
// written before the fault is bounded by counts (8 x 16 x 16 KiB = 2 MiB of a
// 24 MiB disk), so a fast disk cannot fill itself with the store's own data.
TEST(FaultTest, StoreWithConcurrentWritersOnAFullDiskLosesNothingAcknowledged) {
  MOUNT_SMALL_DISK_OR_SKIP(small, 24 << 20);
  const std::string& disk = small.path();
  const std::string db = disk + "/db";
  auto value_of = [](const std::string& key) { return IncompressibleValue(key, 16 << 10); };

  constexpr int kThreads = 8;
  constexpr int kBefore = 16;     // writes per thread before the disk fills
  constexpr int kRefusals = 4;    // refusals per thread while it is full
  constexpr int kResumed = 4;     // writes per thread that must land after
  constexpr int kMaxFullAttempts = 200, kMaxResumeAttempts = 4000;  // failure guards
  std::vector<std::vector<std::string>> acked(kThreads);
  std::vector<int> refusals(kThreads, 0), resumed(kThreads, 0), failed_before(kThreads, 0);
  std::atomic<int> phase{0};  // 0 before, 1 full, 2 space back
  std::atomic<int> ready{0}, refused_enough{0};
  std::vector<std::string> bad_codes;
  absl::Mutex bad_mu;
  {
    auto store = storage::Store::Open({.path = db});
    ASSERT_TRUE(store.ok()) << store.status();
    std::vector<std::thread> writers;
    for (int t = 0; t < kThreads; ++t) {
      writers.emplace_back([&, t] {
        int n = 0;
        auto put = [&]() -> absl::Status {
          const std::string key = absl::StrCat("w", t, "-", n++);
          absl::Status s = (*store)->Put(storage::Column::kJobs, key, value_of(key));
          if (s.ok()) {
            acked[t].push_back(key);
          } else if (s.code() != absl::StatusCode::kResourceExhausted) {
            absl::MutexLock lock(&bad_mu);
            bad_codes.push_back(s.ToString());
          }
          return s;
        };
        for (int i = 0; i < kBefore; ++i) failed_before[t] += !put().ok();
        ++ready;
        if (!testing::WaitUntil([&] { return phase.load() >= 1; }, kPatience)) return;
        for (int i = 0; i < kMaxFullAttempts && refusals[t] < kRefusals; ++i) {
          if (!put().ok()) ++refusals[t];
        }
        ++refused_enough;
        if (!testing::WaitUntil([&] { return phase.load() >= 2; }, kPatience)) return;
        for (int i = 0; i < kMaxResumeAttempts && resumed[t] < kResumed; ++i) {
          if (put().ok()) {
            ++resumed[t];
          } else {
            absl::SleepFor(absl::Milliseconds(5));  // the store retries once a second
          }
        }
      });
    }
    EXPECT_TRUE(testing::WaitUntil([&] { return ready.load() == kThreads; }, kPatience));
    const std::string filler = FillDisk(disk);
    phase = 1;
    EXPECT_TRUE(testing::WaitUntil([&] { return refused_enough.load() == kThreads; }, kPatience));
    fs::remove(filler);
    phase = 2;
    for (std::thread& w : writers) w.join();
  }
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(failed_before[t], 0) << "thread " << t << ": writes failed before the disk filled";
    EXPECT_EQ(refusals[t], kRefusals) << "thread " << t << ": writes kept succeeding on a full disk";
    EXPECT_EQ(resumed[t], kResumed) << "thread " << t << ": writes did not resume after space came back";
  }
  EXPECT_TRUE(bad_codes.empty()) << bad_codes.size() << " writes failed otherwise, e.g. "
                                 << (bad_codes.empty() ? "" : bad_codes.front());
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
  EXPECT_GE(total, static_cast<size_t>(kThreads * (kBefore + kResumed)));
}

// A full disk (a filler takes every free byte): while less than 1 MiB is
// free the store does not close its instance to try a reopen (one that fails
// there would stop reads too), so past its once-a-second recovery writes stay
// refused with the disk-full error and reads go on; once space is freed,
// writes resume.
TEST(FaultTest, StoreOnAFullDiskKeepsServingReadsWhileItCannotReopen) {
  MOUNT_SMALL_DISK_OR_SKIP(small, 8 << 20);
  const std::string db = small.path() + "/db";
  auto store = storage::Store::Open({.path = db});
  ASSERT_TRUE(store.ok()) << store.status();
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE((*store)->Put(storage::Column::kJobs, absl::StrCat("k", i), "value").ok());
  }
  const std::string filler = FillDisk(small.path());
  // The WAL's last page may still take a few small records.
  absl::Status refused;
  for (int i = 0; i < 10000 && refused.ok(); ++i) {
    refused = (*store)->Put(storage::Column::kJobs, absl::StrCat("full", i), "value");
  }
  ASSERT_FALSE(refused.ok()) << "small writes kept succeeding on a full disk";
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  for (int round = 0; round < 2; ++round) {
    absl::SleepFor(absl::Milliseconds(1100));  // a recovery is due
    const absl::Status s = (*store)->Put(storage::Column::kJobs, "late", "value");
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    EXPECT_THAT(std::string(s.message()), Not(HasSubstr("reopening the store failed"))) << s;
    auto v = (*store)->Get(storage::Column::kJobs, "k99");
    ASSERT_TRUE(v.ok()) << "reads stopped on a full disk: " << v.status();
    EXPECT_EQ(*v, "value");
  }
  fs::remove(filler);
  absl::Status resumed = absl::UnknownError("not tried");
  for (int i = 0; i < 100 && !resumed.ok(); ++i) {
    resumed = (*store)->Put(storage::Column::kJobs, "after", "value");
    if (!resumed.ok()) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(resumed.ok()) << resumed;
  EXPECT_EQ((*store)->Get(storage::Column::kJobs, "k0").value_or(""), "value");
}

// The store fills the disk with its own data (no filler to remove): the
// refusal says the disk is full and that space must be freed; reads go on
// while it stays full; once space is freed (a ballast file, made before the
// store filled the rest, is deleted) writes resume without a restart; the
// disk fills again, the store is closed and cannot open while the disk is
// full (a clear RESOURCE_EXHAUSTED), and once space is freed again it opens
// with every acknowledged write. Freeing 2 MiB of a 16 MiB disk is enough:
// opening does not first flush the WAL (about 12 MiB here) to a table file.
TEST(FaultTest, StoreThatFillsItsOwnDiskOpensWithEverythingOnceSpaceIsFreed) {
  MOUNT_SMALL_DISK_OR_SKIP(small, 16 << 20);
  const std::string& disk = small.path();
  const std::string db = disk + "/db";
  const std::string ballast[2] = {disk + "/ballast-1", disk + "/ballast-2"};
  for (const std::string& path : ballast) ASSERT_EQ(WriteBallast(path, 2 << 20), "");
  auto value_of = [](const std::string& key) { return IncompressibleValue(key, 16 << 10); };
  // At most twice the disk's size of writes before a refusal: a failure guard.
  constexpr int kMaxWrites = 2 * (16 << 20) / (16 << 10);
  std::vector<std::string> acked;
  int n = 0;
  // Writes until the first refusal; returns it.
  auto fill = [&](storage::Store& store) {
    absl::Status refused;
    for (int i = 0; i < kMaxWrites && refused.ok(); ++i) {
      const std::string key = absl::StrCat("k", n++);
      refused = store.Put(storage::Column::kJobs, key, value_of(key));
      if (refused.ok()) acked.push_back(key);
    }
    return refused;
  };
  auto expect_disk_full = [&](const absl::Status& s) {
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(db)) << "names the folder";
    EXPECT_THAT(std::string(s.message()), HasSubstr("disk is full")) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("free at least 1 MiB on the disk")) << s;
  };
  {
    auto store = storage::Store::Open({.path = db});
    ASSERT_TRUE(store.ok()) << store.status();
    const absl::Status refused = fill(**store);
    ASSERT_FALSE(refused.ok()) << kMaxWrites << " writes of 16 KiB fit on a 16 MiB disk";
    EXPECT_GT(acked.size(), 400u) << "refused before the disk was full: " << refused;
    expect_disk_full(refused);

    // Still full, past the store's once-a-second recovery: writes are
    // refused, and the instance that serves reads stays open.
    absl::SleepFor(absl::Milliseconds(1100));
    expect_disk_full((*store)->Put(storage::Column::kJobs, "while-full", value_of("while-full")));
    for (const std::string& key : {acked.front(), acked.back()}) {
      auto v = (*store)->Get(storage::Column::kJobs, key);
      ASSERT_TRUE(v.ok()) << "reads stopped on a full disk: " << v.status();
      EXPECT_EQ(*v, value_of(key));
    }
    EXPECT_FALSE((*store)->Get(storage::Column::kJobs, "while-full").ok());

    // 2 MiB freed: writes resume in this process.
    fs::remove(ballast[0]);
    int resumed = 0;
    for (int i = 0; i < 100 && resumed < 8; ++i) {
      const std::string key = absl::StrCat("k", n++);
      if ((*store)->Put(storage::Column::kJobs, key, value_of(key)).ok()) {
        acked.push_back(key);
        ++resumed;
      } else {
        absl::SleepFor(absl::Milliseconds(50));
      }
    }
    ASSERT_EQ(resumed, 8) << "writes did not resume after 2 MiB were freed";
    // The store fills the disk again, and is closed (as in a restart).
    const size_t before_second_fill = acked.size();
    const absl::Status again = fill(**store);
    ASSERT_FALSE(again.ok());
    EXPECT_GT(acked.size(), before_second_fill);
    expect_disk_full(again);
  }
  // It cannot open on the full disk; the error says why and what to do.
  // (Closing gives back what RocksDB had reserved beyond its files' ends, a
  // size that depends on the file system: a filler takes that back.)
  const std::string filler = FillDisk(disk);
  {
    auto full = storage::Store::Open({.path = db});
    ASSERT_FALSE(full.ok()) << "opened on a full disk";
    expect_disk_full(full.status());
  }
  // 2 MiB freed: it opens with every acknowledged write, and takes more.
  fs::remove(filler);
  fs::remove(ballast[1]);
  auto reopened = storage::Store::Open({.path = db});
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  for (const std::string& key : acked) {
    auto v = (*reopened)->Get(storage::Column::kJobs, key);
    ASSERT_TRUE(v.ok()) << "acknowledged write " << key << " lost: " << v.status();
    EXPECT_EQ(*v, value_of(key)) << key;
  }
  EXPECT_TRUE((*reopened)->Put(storage::Column::kJobs, "after", "x").ok());
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

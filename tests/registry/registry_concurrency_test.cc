// The registry under concurrent calls: writes do not hold the registry's
// mutex (concurrent reports and leases reach the store together, which is
// what lets RocksDB group-commit them), reads do not wait for a write in
// flight, and the reservations that replace the one lock keep every
// outcome exact (each shard done once, one merge, one version). Also the
// lease index (ShardIndex) on its own.
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "services/registry/registry.h"
#include "services/registry/shard_index.h"
#include "tests/registry/forwarding_store.h"
#include "tests/registry/registry_test_util.h"
#include "tests/storage/temp_dir.h"

namespace moend::registry {
namespace {

using ::moend::testing::TempDir;
using storage::Column;
using testing::ExpectedTable;
using testing::ReportFor;
using testing::SmallTuples;
using testing::TinyConfig;

// How long a test waits for something that must happen before it gives up
// and fails (never how long work runs).
constexpr auto kPatience = std::chrono::seconds(20);

// Wraps a real store. While armed, each write waits until `gate` writes are
// in the store at once (or kPatience passes: then `timed_out` is set and
// the write goes on), so a test can tell whether writes overlap. Can also
// hold every write until released, or fail the next write.
class ObservedStore final : public testing::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;

  absl::Status Write(const storage::WriteBatch& batch) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (fail_next_) {
        fail_next_ = false;
        return absl::UnavailableError("write failed (injected)");
      }
      ++in_flight_;
      max_in_flight_ = std::max(max_in_flight_, in_flight_);
      changed_.notify_all();
      if (gate_ > 0 &&
          !changed_.wait_for(lock, kPatience, [&] { return in_flight_ >= gate_ || open_; })) {
        timed_out_ = true;
      }
      if (gate_ > 0) open_ = true;  // the gate opened (or gave up): let everyone through
      changed_.wait(lock, [&] { return !held_; });
    }
    absl::Status s = ForwardingStore::Write(batch);
    std::lock_guard<std::mutex> lock(mu_);
    --in_flight_;
    ++writes_;
    changed_.notify_all();
    return s;
  }

  void ArmGate(int writers) {
    std::lock_guard<std::mutex> lock(mu_);
    gate_ = writers;
    open_ = false;
    max_in_flight_ = 0;
  }
  void Hold(bool held) {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = held;
    changed_.notify_all();
  }
  void FailNextWrite() {
    std::lock_guard<std::mutex> lock(mu_);
    fail_next_ = true;
  }
  // Waits until `n` writes are in the store (true) or kPatience passes.
  bool AwaitInFlight(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, kPatience, [&] { return in_flight_ >= n; });
  }
  int max_in_flight() {
    std::lock_guard<std::mutex> lock(mu_);
    return max_in_flight_;
  }
  bool timed_out() {
    std::lock_guard<std::mutex> lock(mu_);
    return timed_out_;
  }

 private:
  std::mutex mu_;
  std::condition_variable changed_;
  int in_flight_ = 0, max_in_flight_ = 0, gate_ = 0, writes_ = 0;
  bool open_ = false, held_ = false, timed_out_ = false, fail_next_ = false;
};

class RegistryConcurrencyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = storage::Store::Open({.path = dir_.Sub("db")});
    ASSERT_TRUE(store.ok()) << store.status();
    auto observed = std::make_unique<ObservedStore>(std::move(store).value());
    store_ = observed.get();
    RegistryOptions options;
    options.lease_duration = absl::Seconds(60);
    options.clock = &clock_;
    auto r = Registry::Open(std::move(observed), options);
    ASSERT_TRUE(r.ok()) << r.status();
    registry_ = std::move(r).value();
    ASSERT_TRUE(registry_->RegisterModel("tinycode", TinyConfig()).ok());
  }

  // One sample and all 12 layers a shard.
  Job Submit(int64_t shards) {
    JobSpec spec;
    spec.model = "tinycode";
    spec.tuples = SmallTuples();
    spec.seq_len = 4096;
    spec.num_samples = shards;
    spec.samples_per_shard = 1;
    auto job = registry_->SubmitJob(spec);
    EXPECT_TRUE(job.ok()) << job.status();
    return *job;
  }

  std::vector<Lease> LeaseAll(int64_t n) {
    std::vector<Lease> leases;
    for (int64_t i = 0; i < n; ++i) {
      auto lease = registry_->LeaseShard("w" + std::to_string(i));
      EXPECT_TRUE(lease.ok() && lease->has_value());
      leases.push_back(**lease);
    }
    return leases;
  }

  TempDir dir_;
  ManualClock clock_;
  ObservedStore* store_ = nullptr;
  std::unique_ptr<Registry> registry_;
};

TEST_F(RegistryConcurrencyTest, ConcurrentReportsReachTheStoreTogether) {
  constexpr int kThreads = 8;
  Submit(kThreads + 1);  // one shard stays out: no report completes the job
  std::vector<Lease> leases = LeaseAll(kThreads);
  store_->ArmGate(kThreads);
  std::vector<std::thread> threads;
  std::atomic<int> accepted{0};
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      auto r = registry_->ReportShard(ReportFor(leases[i]));
      if (r.ok() && !r->duplicate) ++accepted;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(store_->timed_out()) << "the reports' writes never were in the store together";
  EXPECT_EQ(store_->max_in_flight(), kThreads);
  EXPECT_EQ(accepted, kThreads);
  auto job = registry_->GetJob(leases[0].job_id);
  EXPECT_EQ(job->shards_done, kThreads);
  EXPECT_EQ(job->state, JobState::kRunning);
}

TEST_F(RegistryConcurrencyTest, ConcurrentLeasesReachTheStoreTogetherAndGetDistinctShards) {
  constexpr int kThreads = 8;
  Submit(kThreads);
  store_->ArmGate(kThreads);
  std::vector<std::thread> threads;
  std::vector<int64_t> shard(kThreads, -1);
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      auto lease = registry_->LeaseShard("w" + std::to_string(i));
      if (lease.ok() && lease->has_value()) shard[i] = (*lease)->shard.index;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(store_->timed_out()) << "the leases' writes never were in the store together";
  std::sort(shard.begin(), shard.end());
  for (int i = 0; i < kThreads; ++i) EXPECT_EQ(shard[i], i);
  auto none = registry_->LeaseShard("late");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST_F(RegistryConcurrencyTest, ReadsDoNotWaitForAWriteInFlight) {
  Submit(2);
  std::vector<Lease> leases = LeaseAll(1);
  store_->Hold(true);
  std::thread writer([&] { EXPECT_TRUE(registry_->ReportShard(ReportFor(leases[0])).ok()); });
  ASSERT_TRUE(store_->AwaitInFlight(1));
  // The report's batch is in the store and held there; every read answers.
  std::atomic<bool> read{false};
  std::thread reader([&] {
    EXPECT_TRUE(registry_->GetModel("tinycode").ok());
    EXPECT_EQ(registry_->ListModels().size(), 1u);
    auto job = registry_->GetJob(leases[0].job_id);
    EXPECT_EQ(job->shards_done, 0) << "a write in flight is not visible";
    EXPECT_EQ(registry_->ListJobs("").size(), 1u);
    EXPECT_TRUE(registry_->EventsAfter("", 0).empty());
    read = true;
  });
  for (int i = 0; i < 2000 && !read; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const bool answered = read;
  store_->Hold(false);
  reader.join();
  writer.join();
  EXPECT_TRUE(answered) << "reads waited for the write";
  EXPECT_EQ(registry_->GetJob(leases[0].job_id)->shards_done, 1);
}

// Many workers race to lease and report every shard, each report sent
// twice: every shard is done once, the job merges once into one version,
// and the table is the mean over every sample.
TEST_F(RegistryConcurrencyTest, AReportStormCompletesTheJobExactlyOnce) {
  constexpr int kShards = 48, kThreads = 8;
  Job job = Submit(kShards);
  std::atomic<int> accepted{0}, duplicates{0}, done_reports{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int n = 0; n < kShards; ++n) {  // at most every shard
        auto lease = registry_->LeaseShard("w" + std::to_string(t));
        if (!lease.ok()) ++errors;
        if (!lease.ok() || !lease->has_value()) return;
        for (int copy = 0; copy < 2; ++copy) {
          auto r = registry_->ReportShard(ReportFor(**lease));
          if (!r.ok()) {
            ++errors;
            continue;
          }
          (r->duplicate ? duplicates : accepted)++;
          if (r->job_done && !r->duplicate) ++done_reports;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(accepted, kShards);
  EXPECT_EQ(duplicates, kShards);
  EXPECT_EQ(done_reports, 1) << "exactly one report completes the job";
  auto after = registry_->GetJob(job.spec.job_id);
  EXPECT_EQ(after->state, JobState::kDone);
  EXPECT_EQ(after->shards_done, kShards);
  EXPECT_EQ(after->table_version, 1u);
  EXPECT_EQ(registry_->GetModel("tinycode")->version, 1u);
  EXPECT_EQ(registry_->EventsAfter("tinycode", 0).size(), 1u);
  auto table = registry_->GetTable("tinycode", 0);
  ASSERT_TRUE(table.ok()) << table.status();
  const auto expected = ExpectedTable(12, kShards, SmallTuples().size());
  for (size_t l = 0; l < expected.size(); ++l) {
    for (size_t i = 0; i < expected[l].size(); ++i) {
      EXPECT_NEAR(table->table.s[l][i], expected[l][i], 1e-12 * (1 + expected[l][i]));
    }
  }
}

// Two jobs of one model complete at the same time and a table is published
// meanwhile: versions 1, 2 and 3 each go to exactly one of them.
TEST_F(RegistryConcurrencyTest, ConcurrentNewVersionsOfOneModelGetDistinctNumbers) {
  Job a = Submit(1);
  Job b = Submit(1);
  auto la = registry_->LeaseShard("wa", a.spec.job_id);
  auto lb = registry_->LeaseShard("wb", b.spec.job_id);
  ASSERT_TRUE(la.ok() && la->has_value() && lb.ok() && lb->has_value());
  const SensitivityTable table = testing::TinyTable(1);
  std::vector<uint64_t> versions(3, 0);
  std::thread ta([&] { versions[0] = registry_->ReportShard(ReportFor(**la))->model_version; });
  std::thread tb([&] { versions[1] = registry_->ReportShard(ReportFor(**lb))->model_version; });
  std::thread tp([&] { versions[2] = *registry_->PublishTable(table); });
  ta.join();
  tb.join();
  tp.join();
  std::sort(versions.begin(), versions.end());
  EXPECT_EQ(versions, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(registry_->GetModel("tinycode")->version, 3u);
  std::vector<VersionEvent> feed = registry_->EventsAfter("tinycode", 0);
  ASSERT_EQ(feed.size(), 3u);
  for (uint64_t v = 1; v <= 3; ++v) {
    auto t = registry_->GetTable("tinycode", v);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->version, v);
    EXPECT_EQ(feed[v - 1].run_id, t->run_id);
  }
}

// A failed write gives back what it reserved: the shard can be reported
// (or leased) again, and the job's last report can still merge.
TEST_F(RegistryConcurrencyTest, AFailedWriteReleasesItsReservations) {
  Job job = Submit(2);
  store_->FailNextWrite();
  auto failed_lease = registry_->LeaseShard("w0");
  EXPECT_TRUE(absl::IsUnavailable(failed_lease.status())) << failed_lease.status();
  std::vector<Lease> leases = LeaseAll(2);
  EXPECT_EQ(leases[0].shard.index, 0) << "the shard of the failed lease is leased again";
  EXPECT_EQ(leases[0].lease_id, job.spec.job_id + "/0/1") << "the failed lease left no attempt";
  ASSERT_TRUE(registry_->ReportShard(ReportFor(leases[0])).ok());
  store_->FailNextWrite();
  auto failed_last = registry_->ReportShard(ReportFor(leases[1]));
  EXPECT_TRUE(absl::IsUnavailable(failed_last.status())) << failed_last.status();
  EXPECT_EQ(registry_->GetModel("tinycode")->version, 0u);
  auto last = registry_->ReportShard(ReportFor(leases[1]));
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_FALSE(last->duplicate);
  EXPECT_TRUE(last->job_done);
  EXPECT_EQ(last->model_version, 1u);
}

TEST(ShardIndexTest, HandsOutTheOldestJobsFirstShardAndLapsedLeases) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  ShardIndex index;
  index.AddAvailable("m", {2, 0});
  index.AddAvailable("m", {1, 3});
  index.AddAvailable("other", {3, 0});
  index.AddLease("m", {1, 1}, t0 + absl::Seconds(10));
  using Ref = ShardIndex::Ref;
  EXPECT_EQ(index.First(std::nullopt, ""), (Ref{1, 3}));
  EXPECT_EQ(index.First(2, ""), (Ref{2, 0}));
  EXPECT_EQ(index.First(std::nullopt, "other"), (Ref{3, 0}));
  EXPECT_EQ(index.First(3, "m"), std::nullopt) << "job 3 is of another model";
  EXPECT_EQ(index.First(4, ""), std::nullopt);
  index.Expire(t0 + absl::Seconds(9));
  EXPECT_EQ(index.First(1, ""), (Ref{1, 3}));
  index.Expire(t0 + absl::Seconds(10));  // expiry <= now: lapsed
  EXPECT_EQ(index.First(1, ""), (Ref{1, 1}));
  EXPECT_EQ(index.leased(), 0u);
  index.Remove("m", {1, 1}, t0 + absl::Seconds(10));
  index.Remove("m", {1, 3}, absl::InfinitePast());
  EXPECT_EQ(index.First(std::nullopt, "m"), (Ref{2, 0}));
  index.AddLease("m", {2, 5}, t0);
  index.Remove("m", {2, 5}, t0);
  index.Expire(absl::InfiniteFuture());
  EXPECT_EQ(index.First(2, "m"), (Ref{2, 0})) << "a removed lease does not come back";
  EXPECT_EQ(index.available(), 2u);
}

}  // namespace
}  // namespace moend::registry

#include "services/registry/registry.h"

#include <cmath>
#include <limits>
#include <thread>

#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "tests/registry/registry_test_util.h"
#include "tests/storage/temp_dir.h"

namespace moend::registry {
namespace {

using ::moend::testing::TempDir;
using testing::ExpectedTable;
using testing::ReportFor;
using testing::SmallTuples;
using testing::TinyConfig;

// Value of a metric sample in the registry's collected families.
double MetricValue(prometheus::Registry& metrics, const std::string& name,
                   const std::string& label_value) {
  for (const auto& family : metrics.Collect()) {
    if (family.name != name) continue;
    for (const auto& m : family.metric) {
      for (const auto& l : m.label) {
        if (l.value == label_value) {
          return family.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
        }
      }
    }
  }
  return std::numeric_limits<double>::quiet_NaN();
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }

  void Reopen() {
    registry_.reset();
    auto store = storage::Store::Open({.path = dir_.Sub("db")});
    ASSERT_TRUE(store.ok()) << store.status();
    RegistryOptions options;
    options.lease_duration = absl::Seconds(30);
    options.clock = &clock_;
    options.metrics = &metrics_;
    auto r = Registry::Open(std::move(store).value(), options);
    ASSERT_TRUE(r.ok()) << r.status();
    registry_ = std::move(r).value();
  }

  // tinycode: 12 layers; 16 samples in ranges of 5 (5,5,5,1) x layers in
  // ranges of 5 (5,5,2) = 12 shards.
  Job SubmitTinyJob() {
    EXPECT_TRUE(registry_->RegisterModel("tinycode", TinyConfig()).ok());
    JobSpec spec;
    spec.model = "tinycode";
    spec.tuples = SmallTuples();
    spec.seq_len = 4096;
    spec.num_samples = 16;
    spec.samples_per_shard = 5;
    spec.layers_per_shard = 5;
    spec.dataset = "data/calibration.bin";
    auto job = registry_->SubmitJob(spec);
    EXPECT_TRUE(job.ok()) << job.status();
    return *job;
  }

  Lease MustLease(const std::string& worker) {
    auto lease = registry_->LeaseShard(worker);
    EXPECT_TRUE(lease.ok()) << lease.status();
    EXPECT_TRUE(lease->has_value());
    return **lease;
  }

  // Number of stored shard reports of `job`, read straight from the store.
  size_t StoredReports(const std::string& job_id) {
    registry_.reset();
    auto store = storage::Store::Open({.path = dir_.Sub("db")});
    EXPECT_TRUE(store.ok());
    size_t n = (*store)->Scan(storage::Column::kJobs, "report/" + job_id + "/")->size();
    size_t tables = (*store)->Scan(storage::Column::kTables, "")->size();
    size_t feed = (*store)->Scan(storage::Column::kFeed, "")->size();
    store->reset();
    Reopen();
    return n + tables + feed;
  }

  TempDir dir_;
  ManualClock clock_;
  prometheus::Registry metrics_;
  std::unique_ptr<Registry> registry_;
};

TEST_F(RegistryTest, RegisterModelReadsShapeAndIsIdempotent) {
  auto m = registry_->RegisterModel("tinycode", TinyConfig());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->shape.num_layers, 12);
  EXPECT_EQ(m->shape.num_kv_heads, 2);
  EXPECT_EQ(m->version, 0u);
  EXPECT_TRUE(registry_->RegisterModel("tinycode", TinyConfig()).ok());
  auto other = registry_->RegisterModel(
      "tinycode", R"({"num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 64})");
  EXPECT_TRUE(absl::IsAlreadyExists(other.status())) << other.status();
  EXPECT_TRUE(absl::IsInvalidArgument(registry_->RegisterModel("a/b", TinyConfig()).status()));
  EXPECT_TRUE(absl::IsNotFound(registry_->GetModel("nope").status()));
  EXPECT_EQ(registry_->ListModels().size(), 1u);
}

TEST_F(RegistryTest, SubmitJobSplitsBySampleAndLayerRange) {
  Job job = SubmitTinyJob();
  EXPECT_EQ(job.spec.job_id, "job-000001");
  EXPECT_EQ(job.spec.compression_point, 4096 - 256);
  ASSERT_EQ(job.shards_total(), 12);
  std::vector<std::pair<int64_t, int64_t>> samples, layers;
  for (const Shard& s : job.shards) {
    samples.push_back({s.sample_begin, s.sample_end});
    layers.push_back({s.layer_begin, s.layer_end});
    EXPECT_EQ(s.state, ShardState::kPending);
  }
  EXPECT_EQ(samples[0], std::make_pair(int64_t{0}, int64_t{5}));
  EXPECT_EQ(samples[11], std::make_pair(int64_t{15}, int64_t{16}));
  EXPECT_EQ(layers[0], std::make_pair(int64_t{0}, int64_t{5}));
  EXPECT_EQ(layers[2], std::make_pair(int64_t{10}, int64_t{12}));
  EXPECT_EQ(MetricValue(metrics_, "moend_registry_jobs", "pending"), 1);
}

TEST_F(RegistryTest, SubmitJobDefaultsToTheFullGridAndOneShard) {
  ASSERT_TRUE(registry_->RegisterModel("tinycode", TinyConfig()).ok());
  auto job = registry_->SubmitJob({.model = "tinycode", .seq_len = 4096, .num_samples = 16});
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->spec.tuples.size(), 112u);
  EXPECT_EQ(job->shards_total(), 1);
  EXPECT_EQ(job->shards[0].layer_end, 12);
  EXPECT_EQ(job->shards[0].sample_end, 16);
}

TEST_F(RegistryTest, SubmitJobRejectsBadSpecs) {
  ASSERT_TRUE(registry_->RegisterModel("tinycode", TinyConfig()).ok());
  JobSpec good{.model = "tinycode", .seq_len = 4096, .num_samples = 16};
  auto expect = [&](JobSpec spec, absl::StatusCode code, const std::string& words) {
    auto job = registry_->SubmitJob(spec);
    EXPECT_EQ(job.status().code(), code) << job.status();
    EXPECT_NE(job.status().message().find(words), std::string::npos) << job.status();
  };
  JobSpec s = good;
  s.model = "other";
  expect(s, absl::StatusCode::kNotFound, "not registered");
  s = good;
  s.seq_len = 8192;
  expect(s, absl::StatusCode::kInvalidArgument, "max_position_embeddings 4096");
  s = good;
  s.num_samples = 0;
  expect(s, absl::StatusCode::kInvalidArgument, "num_samples");
  s = good;
  s.layers_per_shard = 13;
  expect(s, absl::StatusCode::kInvalidArgument, "[1, num_layers=12]");
  s = good;
  s.tuples = {{1.0, 16, 16}, {1.0, 16, 16}};
  expect(s, absl::StatusCode::kInvalidArgument, "twice");
  s = good;
  s.tuples = {{1.0, 3, 16}};
  expect(s, absl::StatusCode::kInvalidArgument, "bits");
  EXPECT_TRUE(registry_->ListJobs("").empty());
}

TEST_F(RegistryTest, SubmitWithSameIdIsIdempotent) {
  ASSERT_TRUE(registry_->RegisterModel("tinycode", TinyConfig()).ok());
  JobSpec spec{.job_id = "nightly", .model = "tinycode", .seq_len = 4096, .num_samples = 4};
  ASSERT_TRUE(registry_->SubmitJob(spec).ok());
  ASSERT_TRUE(registry_->SubmitJob(spec).ok());
  EXPECT_EQ(registry_->ListJobs("tinycode").size(), 1u);
  spec.num_samples = 8;
  EXPECT_TRUE(absl::IsAlreadyExists(registry_->SubmitJob(spec).status()));
}

TEST_F(RegistryTest, ExpiredLeaseGoesToAnotherWorker) {
  Job job = SubmitTinyJob();
  Lease a = MustLease("worker-a");
  EXPECT_EQ(a.shard.index, 0);
  EXPECT_EQ(a.expiry, clock_.Now() + absl::Seconds(30));
  EXPECT_EQ(a.shape.num_layers, 12);
  EXPECT_EQ(a.spec.tuples, SmallTuples());
  // While a's lease lives, b gets the next shard.
  Lease b = MustLease("worker-b");
  EXPECT_EQ(b.shard.index, 1);

  // a heartbeats at 20 s (extends to 50 s); b does not.
  clock_.Advance(absl::Seconds(20));
  auto extended = registry_->Heartbeat(a.lease_id, "worker-a");
  ASSERT_TRUE(extended.ok()) << extended.status();
  EXPECT_EQ(*extended, clock_.Now() + absl::Seconds(30));

  clock_.Advance(absl::Seconds(15));  // t = 35 s: b expired at 30 s, a lives to 50 s
  Lease c = MustLease("worker-c");
  EXPECT_EQ(c.shard.index, 1) << "the lapsed shard is handed out before fresh ones";
  EXPECT_EQ(c.shard.attempts, 2);
  EXPECT_NE(c.lease_id, b.lease_id);
  EXPECT_EQ(MetricValue(metrics_, "moend_registry_leases_total", "reassigned"), 1);

  // b's heartbeat now fails: stop working.
  auto hb = registry_->Heartbeat(b.lease_id, "worker-b");
  EXPECT_TRUE(absl::IsFailedPrecondition(hb.status())) << hb.status();
  EXPECT_NE(hb.status().message().find("superseded"), std::string::npos);
  // A heartbeat from the wrong worker is refused too.
  EXPECT_TRUE(absl::IsFailedPrecondition(registry_->Heartbeat(c.lease_id, "worker-a").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(registry_->Heartbeat("garbage", "worker-a").status()));
}

TEST_F(RegistryTest, LeaseFiltersAndNothingAvailable) {
  Job job = SubmitTinyJob();
  EXPECT_TRUE(absl::IsNotFound(registry_->LeaseShard("w", "no-such-job").status()));
  EXPECT_TRUE(absl::IsNotFound(registry_->LeaseShard("w", "", "no-such-model").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(registry_->LeaseShard("").status()));
  for (int i = 0; i < 12; ++i) MustLease("w");
  auto none = registry_->LeaseShard("w");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST_F(RegistryTest, AllShardsInMergesBumpsVersionAndPublishes) {
  Job job = SubmitTinyJob();
  std::vector<VersionEvent> events_seen;
  std::thread watcher([&] {
    auto events = registry_->WaitForEvents("tinycode", 0, {}, absl::Now() + absl::Seconds(20));
    if (events.ok()) events_seen = *events;
  });
  for (int i = 0; i < 12; ++i) {
    Lease lease = MustLease(i % 2 ? "worker-a" : "worker-b");
    auto result = registry_->ReportShard(ReportFor(lease));
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->shards_done, i + 1);
    EXPECT_EQ(result->job_done, i == 11);
    EXPECT_EQ(result->model_version, i == 11 ? 1u : 0u);
    if (i == 5) EXPECT_EQ(MetricValue(metrics_, "moend_registry_jobs", "running"), 1);
  }
  watcher.join();
  ASSERT_EQ(events_seen.size(), 1u);
  EXPECT_EQ(events_seen[0].version, 1u);
  EXPECT_EQ(events_seen[0].run_id, job.spec.job_id);

  auto done = registry_->GetJob(job.spec.job_id);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state, JobState::kDone);
  EXPECT_EQ(done->table_version, 1u);
  EXPECT_EQ(registry_->GetModel("tinycode")->version, 1u);
  EXPECT_EQ(MetricValue(metrics_, "moend_registry_jobs", "done"), 1);
  EXPECT_EQ(MetricValue(metrics_, "moend_registry_reports_total", "accepted"), 12);

  auto table = registry_->GetTable("tinycode", 0);
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->version, 1u);
  EXPECT_EQ(table->table.samples, 16);
  EXPECT_EQ(table->table.num_kv_heads, 2);
  EXPECT_EQ(table->table.head_dim, 64);
  EXPECT_EQ(table->table.compression_point, 3840);
  auto expected = ExpectedTable(12, 16, SmallTuples().size());
  for (int l = 0; l < 12; ++l) {
    for (int t = 0; t < 3; ++t) EXPECT_NEAR(table->table.s[l][t], expected[l][t], 1e-12);
  }
  EXPECT_TRUE(absl::IsNotFound(registry_->GetTable("tinycode", 2).status()));
  // Nothing left to lease.
  EXPECT_FALSE(registry_->LeaseShard("w")->has_value());
}

TEST_F(RegistryTest, DuplicateReportIsIdempotent) {
  Job job = SubmitTinyJob();
  Lease lease = MustLease("w");
  auto first = registry_->ReportShard(ReportFor(lease));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->duplicate);
  auto second = registry_->ReportShard(ReportFor(lease));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->duplicate);
  EXPECT_EQ(second->shards_done, 1);
  EXPECT_EQ(registry_->GetJob(job.spec.job_id)->shards_done, 1);
  EXPECT_EQ(MetricValue(metrics_, "moend_registry_reports_total", "accepted"), 1);
  EXPECT_EQ(MetricValue(metrics_, "moend_registry_reports_total", "duplicate"), 1);
  EXPECT_EQ(StoredReports(job.spec.job_id), 1u);
}

TEST_F(RegistryTest, ReportFromALapsedLeaseCountsOnceAndTheNewHolderGetsDuplicate) {
  Job job = SubmitTinyJob();
  Lease old_lease = MustLease("slow");
  clock_.Advance(absl::Seconds(31));
  Lease new_lease = MustLease("fast");
  ASSERT_EQ(new_lease.shard.index, old_lease.shard.index);
  auto late = registry_->ReportShard(ReportFor(old_lease));
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_FALSE(late->duplicate);
  auto again = registry_->ReportShard(ReportFor(new_lease));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(registry_->GetJob(job.spec.job_id)->shards_done, 1);
  EXPECT_TRUE(absl::IsFailedPrecondition(registry_->Heartbeat(new_lease.lease_id, "fast").status()));
}

TEST_F(RegistryTest, RejectedReportsStoreNothing) {
  Job job = SubmitTinyJob();
  Lease lease = MustLease("w");
  Lease other = MustLease("w2");
  struct Case {
    const char* name;
    std::function<void(ShardReport&)> mutate;
    absl::StatusCode code;
    const char* words;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<Case> cases = {
      {"unknown job", [](ShardReport& r) { r.job_id = "job-999999"; },
       absl::StatusCode::kNotFound, "no calibration job"},
      {"wrong model", [](ShardReport& r) { r.model = "llama-7b"; },
       absl::StatusCode::kInvalidArgument, "calibrates model 'tinycode'"},
      {"shard out of range", [](ShardReport& r) { r.shard_index = 12; },
       absl::StatusCode::kInvalidArgument, "outside [0, 12)"},
      {"lease of another shard", [&](ShardReport& r) { r.lease_id = other.lease_id; },
       absl::StatusCode::kFailedPrecondition, "never issued"},
      {"lease never issued", [](ShardReport& r) { r.lease_id = "job-000001/0/7"; },
       absl::StatusCode::kFailedPrecondition, "never issued"},
      {"wrong worker", [](ShardReport& r) { r.worker_id = "impostor"; },
       absl::StatusCode::kFailedPrecondition, "held by worker 'w'"},
      {"too few rows", [](ShardReport& r) { r.table.s.pop_back(); },
       absl::StatusCode::kInvalidArgument, "rows"},
      {"short row", [](ShardReport& r) { r.table.s[2].pop_back(); },
       absl::StatusCode::kInvalidArgument, "row of layer 2 has 2 values for 3 tuples"},
      {"wrong layer range", [](ShardReport& r) { r.table.layer_end = 6; },
       absl::StatusCode::kInvalidArgument, "layers [0, 5)"},
      {"wrong samples", [](ShardReport& r) { r.table.samples = 4; },
       absl::StatusCode::kInvalidArgument, "samples"},
      {"wrong tuples", [](ShardReport& r) { r.table.tuples[1].vbits = 2; },
       absl::StatusCode::kInvalidArgument, "tuple 1"},
      {"NaN", [&](ShardReport& r) { r.table.s[1][1] = nan; },
       absl::StatusCode::kInvalidArgument, "not a finite value"},
      {"infinity", [](ShardReport& r) { r.table.s[0][0] = INFINITY; },
       absl::StatusCode::kInvalidArgument, "not a finite value"},
      {"negative", [](ShardReport& r) { r.table.s[4][2] = -0.5; },
       absl::StatusCode::kInvalidArgument, "s[layer 4][tuple 2] = -0.5"},
  };
  for (const Case& c : cases) {
    ShardReport r = ReportFor(lease);
    c.mutate(r);
    auto result = registry_->ReportShard(r);
    EXPECT_EQ(result.status().code(), c.code) << c.name << ": " << result.status();
    EXPECT_NE(result.status().message().find(c.words), std::string::npos)
        << c.name << ": " << result.status();
  }
  EXPECT_EQ(MetricValue(metrics_, "moend_registry_reports_total", "rejected"),
            static_cast<double>(cases.size()));
  EXPECT_EQ(registry_->GetJob(job.spec.job_id)->shards_done, 0);
  EXPECT_EQ(StoredReports(job.spec.job_id), 0u);  // also reopens from disk
  auto reloaded = registry_->GetJob(job.spec.job_id);
  ASSERT_TRUE(reloaded.ok());
  EXPECT_EQ(reloaded->shards_done, 0);
  EXPECT_EQ(reloaded->shards[0].state, ShardState::kLeased);
  // The untouched report still goes through after all that.
  EXPECT_TRUE(registry_->ReportShard(ReportFor(lease)).ok());
}

TEST_F(RegistryTest, StateSurvivesReopen) {
  Job job = SubmitTinyJob();
  for (int i = 0; i < 12; ++i) {
    ASSERT_TRUE(registry_->ReportShard(ReportFor(MustLease("w"))).ok());
  }
  // A second job, partly done, with one live lease.
  auto job2 = registry_->SubmitJob({.model = "tinycode",
                                    .tuples = SmallTuples(),
                                    .seq_len = 4096,
                                    .num_samples = 4,
                                    .samples_per_shard = 2});
  ASSERT_TRUE(job2.ok());
  ASSERT_TRUE(registry_->ReportShard(ReportFor(MustLease("w"))).ok());
  Lease live = MustLease("w");
  auto table_before = registry_->GetTable("tinycode", 1);
  ASSERT_TRUE(table_before.ok());

  Reopen();
  EXPECT_EQ(registry_->GetModel("tinycode")->version, 1u);
  EXPECT_EQ(registry_->GetJob(job.spec.job_id)->state, JobState::kDone);
  auto j2 = registry_->GetJob(job2->spec.job_id);
  ASSERT_TRUE(j2.ok());
  EXPECT_EQ(j2->spec.job_id, "job-000002");
  EXPECT_EQ(j2->shards_done, 1);
  EXPECT_EQ(j2->shards[1].lease_id, live.lease_id);
  EXPECT_TRUE(registry_->Heartbeat(live.lease_id, "w").ok());
  auto table_after = registry_->GetTable("tinycode", 1);
  ASSERT_TRUE(table_after.ok());
  EXPECT_EQ(table_after->table.s, table_before->table.s);
  EXPECT_EQ(registry_->EventsAfter("tinycode", 0).size(), 1u);
  // New job ids continue after the stored ones.
  auto job3 = registry_->SubmitJob({.model = "tinycode", .seq_len = 4096, .num_samples = 1});
  ASSERT_TRUE(job3.ok());
  EXPECT_EQ(job3->spec.job_id, "job-000003");
  // Finishing job 2 after the reopen merges reports stored before it.
  ASSERT_TRUE(registry_->ReportShard(ReportFor(live)).ok());
  EXPECT_EQ(registry_->GetModel("tinycode")->version, 2u);
}

TEST_F(RegistryTest, PublishTableValidatesAndBumpsVersion) {
  ASSERT_TRUE(registry_->RegisterModel("tinycode", TinyConfig()).ok());
  SensitivityTable t = testing::TinyTable(16);
  auto v = registry_->PublishTable(t);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, 1u);
  EXPECT_EQ(*registry_->PublishTable(t), 2u);
  EXPECT_EQ(registry_->GetTable("tinycode", 0)->version, 2u);
  EXPECT_EQ(registry_->EventsAfter("tinycode", 1).size(), 1u);

  SensitivityTable wrong = t;
  wrong.num_kv_heads = 4;
  auto r = registry_->PublishTable(wrong);
  EXPECT_TRUE(absl::IsInvalidArgument(r.status()));
  EXPECT_NE(r.status().message().find("does not match model"), std::string::npos);
  wrong = t;
  wrong.s[3][1] = std::nan("");
  EXPECT_TRUE(absl::IsInvalidArgument(registry_->PublishTable(wrong).status()));
  wrong = t;
  wrong.model = "other";
  EXPECT_TRUE(absl::IsNotFound(registry_->PublishTable(wrong).status()));
  EXPECT_EQ(registry_->GetModel("tinycode")->version, 2u);
}

// Per-head rows and signals are stored with the table (RocksDB record) and
// read back after a reopen; a table without them stays per layer.
TEST_F(RegistryTest, PublishedHeadRowsAndSignalsSurviveReopen) {
  ASSERT_TRUE(registry_->RegisterModel("tinycode", TinyConfig()).ok());
  const SensitivityTable heads = testing::TinyHeadTable(16);
  ASSERT_EQ(*registry_->PublishTable(heads), 1u);
  ASSERT_EQ(*registry_->PublishTable(testing::TinyTable(16)), 2u);
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) Reopen();
    auto v1 = registry_->GetTable("tinycode", 1);
    ASSERT_TRUE(v1.ok()) << v1.status();
    EXPECT_EQ(v1->table.s_head, heads.s_head) << "pass " << pass;
    EXPECT_EQ(v1->table.signals, heads.signals) << "pass " << pass;
    EXPECT_EQ(v1->table.s, heads.s);
    auto v2 = registry_->GetTable("tinycode", 2);
    ASSERT_TRUE(v2.ok()) << v2.status();
    EXPECT_FALSE(v2->table.has_heads()) << "pass " << pass;
    EXPECT_TRUE(v2->table.signals.empty());
  }
  // s_head of the wrong shape is refused like s.
  SensitivityTable wrong = heads;
  wrong.s_head[4].pop_back();
  EXPECT_TRUE(absl::IsInvalidArgument(registry_->PublishTable(wrong).status()));
}

// Reports with per-head rows merge into the table's s_head (the mean over
// all samples, as s); reports whose head rows do not fit the model are
// refused.
TEST_F(RegistryTest, PerHeadReportsMergeIntoTheTablesHeadRows) {
  Job job = SubmitTinyJob();
  for (int i = 0; i < 12; ++i) {
    Lease lease = MustLease("worker");
    ShardReport report = ReportFor(lease);
    report.table.s_head = testing::HeadRows(report.table.s, 2);
    if (i == 0) {
      ShardReport bad = report;
      bad.table.s_head = testing::HeadRows(report.table.s, 3);
      auto r = registry_->ReportShard(bad);
      EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
      EXPECT_NE(r.status().message().find("2 KV heads"), std::string::npos) << r.status();
      bad = report;
      bad.table.s_head.pop_back();
      EXPECT_TRUE(absl::IsInvalidArgument(registry_->ReportShard(bad).status()));
      bad = report;
      bad.table.s_head[0][1][2] = -1;
      EXPECT_TRUE(absl::IsInvalidArgument(registry_->ReportShard(bad).status()));
    }
    auto result = registry_->ReportShard(report);
    ASSERT_TRUE(result.ok()) << result.status();
  }
  auto table = registry_->GetTable("tinycode", 0);
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_TRUE(table->table.has_heads());
  const auto expected = ExpectedTable(12, 16, SmallTuples().size());
  for (int l = 0; l < 12; ++l) {
    for (int h = 0; h < 2; ++h) {
      for (int t = 0; t < 3; ++t) {
        EXPECT_NEAR(table->table.s_head[l][h][t], expected[l][t] * (h + 1), 1e-12)
            << "layer " << l << " head " << h << " tuple " << t;
      }
    }
  }
}

TEST_F(RegistryTest, WaitForEventsTimesOutAndEndsOnShutdown) {
  ASSERT_TRUE(registry_->RegisterModel("tinycode", TinyConfig()).ok());
  auto none = registry_->WaitForEvents("tinycode", 0, {}, absl::Now() + absl::Milliseconds(50));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  absl::Status waited;
  std::thread waiter([&] {
    waited = registry_->WaitForEvents("", 0, {}, absl::Now() + absl::Seconds(30)).status();
  });
  absl::SleepFor(absl::Milliseconds(50));
  registry_->Shutdown();
  waiter.join();
  EXPECT_TRUE(absl::IsCancelled(waited)) << waited;
}

TEST_F(RegistryTest, GetTableBeforeAnyCalibrationSaysWhatToDo) {
  ASSERT_TRUE(registry_->RegisterModel("tinycode", TinyConfig()).ok());
  auto t = registry_->GetTable("tinycode", 0);
  EXPECT_TRUE(absl::IsNotFound(t.status()));
  EXPECT_NE(t.status().message().find("calibration job"), std::string::npos);
}

}  // namespace
}  // namespace moend::registry

// The registry's record format (services/registry/records.h): a database
// that an older moend-registry wrote is read and migrated, a newer one is
// refused. The fixture testdata/format0_db was written by
// testdata/make_registry_db.cc at commit 24ea92c (format 0: moend.v1 RPC
// messages stored as records). Every value checked here follows from that
// program's fixed inputs, not from the code under test.
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "moend/storage/v1/records.pb.h"
#include "services/registry/records.h"
#include "services/registry/registry.h"
#include "storage/store.h"
#include "tests/registry/forwarding_store.h"
#include "tests/storage/temp_dir.h"

namespace moend::registry {
namespace {

using ::moend::testing::TempDir;
using storage::Column;

// A store that fails every write after the first `ok_writes`, as a full disk
// would.
class FailingStore final : public testing::ForwardingStore {
 public:
  FailingStore(std::unique_ptr<storage::Store> inner, int ok_writes)
      : ForwardingStore(std::move(inner)), ok_writes_(ok_writes) {}
  absl::Status Write(const storage::WriteBatch& batch) override {
    if (writes_++ >= ok_writes_) return absl::ResourceExhaustedError("disk full (injected)");
    return ForwardingStore::Write(batch);
  }
  int writes() const { return writes_; }

 private:
  const int ok_writes_;
  int writes_ = 0;
};

const absl::Time kT0 = absl::FromUnixSeconds(1'700'000'000);

// make_registry_db's s of sample i, layer l, tuple t.
double Value(int64_t i, int64_t l, int64_t t) {
  return static_cast<double>((i + 1) * 64 + l * 8 + t) / 1024.0;
}
double MeanOverSamples(int64_t n, int64_t l, int64_t t) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += Value(i, l, t);
  return sum / static_cast<double>(n);
}

const std::vector<CompressionTuple> kTuples = {
    {1.0, 16, 16}, {0.5, 16, 16}, {1.0, 4, 4}, {0.25, 2, 8}};

class RegistryFormatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::copy(std::string(MOEND_SOURCE_DIR) + "/tests/registry/testdata/format0_db",
                          db_path());
  }
  std::string db_path() const { return dir_.Sub("db"); }

  std::unique_ptr<storage::Store> OpenStore() {
    auto store = storage::Store::Open({.path = db_path()});
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(store).value() : nullptr;
  }

  std::unique_ptr<Registry> Open() {
    std::unique_ptr<storage::Store> store = OpenStore();
    if (store == nullptr) return nullptr;
    RegistryOptions options;
    options.clock = &clock_;
    options.lease_duration = absl::Seconds(60);
    auto r = Registry::Open(std::move(store), options);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::move(r).value() : nullptr;
  }

  // Every record the fixture holds, through the Registry's reads.
  void ExpectFixtureContents(Registry& r) {
    std::vector<ModelInfo> models = r.ListModels();
    ASSERT_EQ(models.size(), 2u);
    EXPECT_EQ(models[0].name, "tinycode");
    EXPECT_EQ(models[0].version, 2u);
    EXPECT_EQ(models[0].latest_run_id, "job-a");
    EXPECT_EQ(models[0].created, kT0);
    EXPECT_EQ(models[0].updated, kT0 + absl::Seconds(11));
    EXPECT_EQ(models[0].shape.architecture, "LlamaForCausalLM");
    EXPECT_EQ(models[0].shape.num_layers, 12);
    EXPECT_EQ(models[0].shape.num_attention_heads, 4);
    EXPECT_EQ(models[0].shape.num_kv_heads, 2);
    EXPECT_EQ(models[0].shape.head_dim, 64);
    EXPECT_EQ(models[0].shape.hidden_size, 256);
    EXPECT_EQ(models[0].shape.intermediate_size, 768);
    EXPECT_EQ(models[0].shape.vocab_size, 256);
    EXPECT_NE(models[0].config_json.find("LlamaForCausalLM"), std::string::npos);
    EXPECT_EQ(models[1].name, "tinycode-b");
    EXPECT_EQ(models[1].version, 0u);
    EXPECT_EQ(models[1].created, kT0 + absl::Seconds(1));
    EXPECT_EQ(models[1].shape, models[0].shape);

    auto v1 = r.GetTable("tinycode", 1);
    ASSERT_TRUE(v1.ok()) << v1.status();
    EXPECT_EQ(v1->version, 1u);
    EXPECT_EQ(v1->run_id, "publish-tinycode-1");
    EXPECT_EQ(v1->table.model, "tinycode");
    EXPECT_EQ(v1->table.num_layers, 12);
    EXPECT_EQ(v1->table.num_kv_heads, 2);
    EXPECT_EQ(v1->table.head_dim, 64);
    EXPECT_EQ(v1->table.seq_len, 4096);
    EXPECT_EQ(v1->table.compression_point, 3840);
    EXPECT_EQ(v1->table.samples, 16);
    EXPECT_EQ(v1->table.tuples, kTuples);
    ASSERT_EQ(v1->table.s.size(), 12u);
    for (int64_t l = 0; l < 12; ++l) {
      ASSERT_EQ(v1->table.s[l].size(), 4u);
      for (int64_t t = 0; t < 4; ++t) EXPECT_EQ(v1->table.s[l][t], Value(100, l, t));
    }
    // Written before per-head rows existed: a per-layer table.
    EXPECT_FALSE(v1->table.has_heads());
    EXPECT_TRUE(v1->table.signals.empty());
    auto v2 = r.GetTable("tinycode", 0);  // latest
    ASSERT_TRUE(v2.ok()) << v2.status();
    EXPECT_EQ(v2->version, 2u);
    EXPECT_EQ(v2->run_id, "job-a");
    EXPECT_EQ(v2->table.seq_len, 512);
    EXPECT_EQ(v2->table.compression_point, 256);
    EXPECT_EQ(v2->table.samples, 4);
    EXPECT_EQ(v2->table.tuples, kTuples);
    ASSERT_EQ(v2->table.s.size(), 12u);
    for (int64_t l = 0; l < 12; ++l) {
      for (int64_t t = 0; t < 4; ++t) EXPECT_DOUBLE_EQ(v2->table.s[l][t], MeanOverSamples(4, l, t));
    }
    EXPECT_TRUE(absl::IsNotFound(r.GetTable("tinycode-b", 0).status()));

    std::vector<VersionEvent> feed = r.EventsAfter("", 0);
    ASSERT_EQ(feed.size(), 2u);
    EXPECT_EQ(feed[0].model, "tinycode");
    EXPECT_EQ(feed[0].version, 1u);
    EXPECT_EQ(feed[0].run_id, "publish-tinycode-1");
    EXPECT_EQ(feed[0].time, kT0 + absl::Seconds(2));
    EXPECT_EQ(feed[1].version, 2u);
    EXPECT_EQ(feed[1].run_id, "job-a");
    EXPECT_EQ(feed[1].time, kT0 + absl::Seconds(11));

    std::vector<Job> jobs = r.ListJobs("");
    ASSERT_EQ(jobs.size(), 2u);
    const Job& a = jobs[0];
    EXPECT_EQ(a.spec.job_id, "job-a");
    EXPECT_EQ(a.spec.model, "tinycode");
    EXPECT_EQ(a.spec.tuples, kTuples);
    EXPECT_EQ(a.spec.seq_len, 512);
    EXPECT_EQ(a.spec.compression_point, 256);
    EXPECT_EQ(a.spec.num_samples, 4);
    EXPECT_EQ(a.spec.samples_per_shard, 2);
    EXPECT_EQ(a.spec.layers_per_shard, 6);
    EXPECT_EQ(a.spec.dataset, "data/calibration.bin");
    EXPECT_EQ(a.state, JobState::kDone);
    EXPECT_EQ(a.shards_done, 4);
    EXPECT_EQ(a.table_version, 2u);
    EXPECT_EQ(a.created, kT0 + absl::Seconds(3));
    EXPECT_EQ(a.completed, kT0 + absl::Seconds(11));
    EXPECT_EQ(a.sequence, 1);
    ASSERT_EQ(a.shards.size(), 4u);
    for (int i = 0; i < 4; ++i) {
      const Shard& s = a.shards[i];
      EXPECT_EQ(s.index, i);
      EXPECT_EQ(s.sample_begin, (i / 2) * 2);
      EXPECT_EQ(s.sample_end, (i / 2) * 2 + 2);
      EXPECT_EQ(s.layer_begin, (i % 2) * 6);
      EXPECT_EQ(s.layer_end, (i % 2) * 6 + 6);
      EXPECT_EQ(s.state, ShardState::kDone);
      EXPECT_EQ(s.lease_id, "job-a/" + std::to_string(i) + "/1");
      EXPECT_EQ(s.worker_id, "worker-" + std::to_string(i));
      EXPECT_EQ(s.attempts, 1);
      EXPECT_EQ(s.lease_expiry, kT0 + absl::Seconds(4 + 2 * i + 60));
    }

    const Job& b = jobs[1];
    EXPECT_EQ(b.spec.job_id, "job-000002");
    EXPECT_EQ(b.spec.model, "tinycode-b");
    EXPECT_EQ(b.spec.seq_len, 300);
    EXPECT_EQ(b.spec.compression_point, 44);
    EXPECT_EQ(b.spec.num_samples, 3);
    EXPECT_EQ(b.spec.samples_per_shard, 1);
    EXPECT_EQ(b.spec.layers_per_shard, 12);
    EXPECT_EQ(b.state, JobState::kRunning);
    EXPECT_EQ(b.shards_done, 1);
    EXPECT_EQ(b.table_version, 0u);
    EXPECT_EQ(b.created, kT0 + absl::Seconds(12));
    EXPECT_EQ(b.sequence, 2);
    ASSERT_EQ(b.shards.size(), 3u);
    EXPECT_EQ(b.shards[0].state, ShardState::kDone);
    EXPECT_EQ(b.shards[0].lease_id, "job-000002/0/1");
    EXPECT_EQ(b.shards[0].worker_id, "worker-b0");
    EXPECT_EQ(b.shards[1].state, ShardState::kLeased);
    EXPECT_EQ(b.shards[1].lease_id, "job-000002/1/2");
    EXPECT_EQ(b.shards[1].worker_id, "worker-b2");
    EXPECT_EQ(b.shards[1].attempts, 2);
    EXPECT_EQ(b.shards[1].lease_expiry, kT0 + absl::Seconds(145));  // heartbeat at +85
    EXPECT_EQ(b.shards[2].state, ShardState::kPending);
    EXPECT_EQ(b.shards[2].attempts, 0);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(b.shards[i].sample_begin, i);
      EXPECT_EQ(b.shards[i].sample_end, i + 1);
      EXPECT_EQ(b.shards[i].layer_begin, 0);
      EXPECT_EQ(b.shards[i].layer_end, 12);
    }
  }

  TempDir dir_;
  ManualClock clock_{kT0 + absl::Seconds(90)};
};

TEST_F(RegistryFormatTest, ReadsEveryRecordOfAFormat0Database) {
  std::unique_ptr<Registry> r = Open();
  ASSERT_NE(r, nullptr);
  ExpectFixtureContents(*r);
}

// After the migration every record decodes as format 1, including the runs
// that no Registry call returns, and the job records no longer carry
// format 0's per-report fields.
TEST_F(RegistryFormatTest, MigratesEveryRecordToTheCurrentFormat) {
  {
    std::unique_ptr<storage::Store> store = OpenStore();
    ASSERT_NE(store, nullptr);
    EXPECT_EQ(*records::ReadFormat(*store), 0u);
    ASSERT_TRUE(records::PrepareFormat(*store).ok());
    EXPECT_EQ(*records::ReadFormat(*store), records::kFormatVersion);
    EXPECT_EQ(records::kFormatVersion, 1u);

    auto runs = store->Scan(Column::kRuns, "");
    ASSERT_TRUE(runs.ok());
    ASSERT_EQ(runs->size(), 2u);
    auto job_run = records::DecodeRun((*runs)[0].value, (*runs)[0].key);
    ASSERT_TRUE(job_run.ok()) << job_run.status();
    EXPECT_EQ(job_run->run_id, "job-a");
    EXPECT_EQ(job_run->model, "tinycode");
    EXPECT_EQ(job_run->version, 2u);
    EXPECT_EQ(job_run->samples, 4);
    EXPECT_EQ(job_run->shards, 4);
    EXPECT_EQ(job_run->completed, kT0 + absl::Seconds(11));
    auto publish_run = records::DecodeRun((*runs)[1].value, (*runs)[1].key);
    ASSERT_TRUE(publish_run.ok()) << publish_run.status();
    EXPECT_EQ(publish_run->run_id, "publish-tinycode-1");
    EXPECT_EQ(publish_run->version, 1u);
    EXPECT_EQ(publish_run->samples, 16);
    EXPECT_EQ(publish_run->shards, 0);
    EXPECT_EQ(publish_run->completed, kT0 + absl::Seconds(2));

    // Reports: job-000002's first and job-a's four.
    auto reports = store->Scan(Column::kJobs, "report/");
    ASSERT_TRUE(reports.ok());
    ASSERT_EQ(reports->size(), 5u);
    for (const storage::KeyValue& kv : *reports) {
      auto part = records::DecodePartialTable(kv.value, kv.key);
      ASSERT_TRUE(part.ok()) << part.status();
      EXPECT_EQ(part->tuples, kTuples) << kv.key;
    }
    // Key order: "report/job-000002/..." sorts before "report/job-a/...".
    auto b0 = records::DecodePartialTable((*reports)[0].value, (*reports)[0].key);
    EXPECT_EQ((*reports)[0].key, "report/job-000002/00000000");
    EXPECT_EQ(b0->samples, 1);
    EXPECT_EQ(b0->s[3][2], Value(0, 3, 2));

    for (const char* id : {"job-a", "job-000002"}) {
      auto bytes = store->Get(Column::kJobs, records::JobKey(id));
      ASSERT_TRUE(bytes.ok()) << bytes.status();
      storage::v1::JobRecord record;
      ASSERT_TRUE(record.ParseFromString(*bytes));
      EXPECT_TRUE(record.GetReflection()->GetUnknownFields(record).empty())
          << id << ": format 0's shards_done is still stored";
      EXPECT_EQ(record.state(), std::string(id) == "job-a" ? storage::v1::JOB_STATE_DONE
                                                           : storage::v1::JOB_STATE_PENDING);
    }
  }
  // The migrated database reads the same, twice (no second migration).
  for (int i = 0; i < 2; ++i) {
    std::unique_ptr<Registry> r = Open();
    ASSERT_NE(r, nullptr);
    ExpectFixtureContents(*r);
  }
}

// A migration cut short by a failed write leaves a database that still
// opens as format 0, and the next open finishes the migration.
TEST_F(RegistryFormatTest, AnInterruptedMigrationIsDoneAgainOnTheNextOpen) {
  {
    auto failing = std::make_unique<FailingStore>(OpenStore(), /*ok_writes=*/1);
    // One record a batch: the two rewritten job records, then the format.
    absl::Status s = records::MigrateFormat0(*failing, /*max_batch_bytes=*/1);
    EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
    EXPECT_EQ(failing->writes(), 2);
    EXPECT_EQ(*records::ReadFormat(*failing), 0u);
  }
  std::unique_ptr<Registry> r = Open();
  ASSERT_NE(r, nullptr);
  ExpectFixtureContents(*r);
  r.reset();
  std::unique_ptr<storage::Store> store = OpenStore();
  EXPECT_EQ(*records::ReadFormat(*store), records::kFormatVersion);
}

TEST_F(RegistryFormatTest, ANewerFormatIsRefusedAndLeftAsItIs) {
  {
    std::unique_ptr<storage::Store> store = OpenStore();
    storage::v1::FormatRecord newer;
    newer.set_version(records::kFormatVersion + 1);
    ASSERT_TRUE(store->Put(Column::kMeta, records::kFormatKey, newer.SerializeAsString()).ok());
  }
  {
    auto r = Registry::Open(OpenStore(), {});
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
    EXPECT_NE(r.status().message().find("record format 2"), std::string::npos) << r.status();
    EXPECT_NE(r.status().message().find(db_path()), std::string::npos) << r.status();
    EXPECT_NE(r.status().message().find("reads formats 0 to 1"), std::string::npos)
        << r.status();
  }
  std::unique_ptr<storage::Store> store = OpenStore();
  EXPECT_EQ(*records::ReadFormat(*store), records::kFormatVersion + 1);
  auto job = store->Get(Column::kJobs, records::JobKey("job-000002"));
  storage::v1::JobRecord record;
  ASSERT_TRUE(record.ParseFromString(*job));
  EXPECT_EQ(record.state(), storage::v1::JOB_STATE_RUNNING) << "the record was rewritten";
}

TEST_F(RegistryFormatTest, AnUnreadableFormatRecordIsDataLoss) {
  {
    std::unique_ptr<storage::Store> store = OpenStore();
    ASSERT_TRUE(store->Put(Column::kMeta, records::kFormatKey, "\xff\xff not a record").ok());
  }
  auto r = Registry::Open(OpenStore(), {});
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsDataLoss(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("meta/format"), std::string::npos) << r.status();
}

// Per-head rows (s_head) and signals are fields 10 and 11 of the format-1
// table record and field 6 of the partial-table record: they round-trip, and
// a record written without them (before per-head routing) decodes as a
// per-layer table, so they need no new format.
TEST(RegistryRecordsTest, HeadRowsAndSignalsRoundTripAndOldRecordsArePerLayer) {
  VersionedTable v;
  v.version = 3;
  v.run_id = "job-h";
  v.table.model = "tinycode";
  v.table.num_layers = 2;
  v.table.num_kv_heads = 2;
  v.table.head_dim = 64;
  v.table.seq_len = 4096;
  v.table.compression_point = 3840;
  v.table.samples = 8;
  v.table.tuples = kTuples;
  v.table.s = {{0.0, 0.1, 0.2, 0.3}, {0.0, 0.4, 0.5, 0.6}};
  v.table.s_head = {{{0.0, 0.05, 0.1, 0.15}, {0.0, 0.15, 0.3, 0.45}},
                    {{0.0, 0.2, 0.25, 0.3}, {0.0, 0.6, 0.75, 0.9}}};
  v.table.signals = {"code: 8 x 4096 tokens", "recall: 8 probes"};
  ASSERT_TRUE(v.table.Validate().ok()) << v.table.Validate();
  auto back = records::DecodeTable(records::EncodeTable(v), "tinycode/3");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->version, 3u);
  EXPECT_EQ(back->table.s, v.table.s);
  EXPECT_EQ(back->table.s_head, v.table.s_head);
  EXPECT_EQ(back->table.signals, v.table.signals);

  // The bytes of a record from before: fields 1-9 only.
  storage::v1::TableRecord old;
  old.set_version(3);
  old.set_run_id("job-h");
  storage::v1::SensitivityTable* t = old.mutable_table();
  t->set_model("tinycode");
  t->set_num_layers(2);
  t->set_num_kv_heads(2);
  t->set_head_dim(64);
  for (const CompressionTuple& tuple : kTuples) {
    auto* p = t->add_tuples();
    p->set_keep(tuple.keep);
    p->set_kbits(tuple.kbits);
    p->set_vbits(tuple.vbits);
  }
  for (const auto& row : v.table.s) t->add_s()->mutable_s()->Add(row.begin(), row.end());
  auto old_back = records::DecodeTable(old.SerializeAsString(), "tinycode/3");
  ASSERT_TRUE(old_back.ok()) << old_back.status();
  EXPECT_EQ(old_back->table.s, v.table.s);
  EXPECT_FALSE(old_back->table.has_heads());
  EXPECT_TRUE(old_back->table.signals.empty());

  // A partial table with and without head rows.
  PartialTable part;
  part.layer_begin = 0;
  part.layer_end = 2;
  part.samples = 8;
  part.tuples = kTuples;
  part.s = v.table.s;
  part.s_head = v.table.s_head;
  auto part_back = records::DecodePartialTable(records::EncodePartialTable(part), "report/j/0");
  ASSERT_TRUE(part_back.ok()) << part_back.status();
  EXPECT_EQ(part_back->s, part.s);
  EXPECT_EQ(part_back->s_head, part.s_head);
  part.s_head.clear();
  part_back = records::DecodePartialTable(records::EncodePartialTable(part), "report/j/0");
  ASSERT_TRUE(part_back.ok()) << part_back.status();
  EXPECT_TRUE(part_back->s_head.empty());
}

TEST(RegistryFormatNewTest, ANewDatabaseIsStampedWithTheCurrentFormat) {
  TempDir dir;
  {
    auto store = storage::Store::Open({.path = dir.Sub("db")});
    ASSERT_TRUE(store.ok());
    auto r = Registry::Open(std::move(store).value(), {});
    ASSERT_TRUE(r.ok()) << r.status();
  }
  auto store = storage::Store::Open({.path = dir.Sub("db")});
  EXPECT_EQ(*records::ReadFormat(**store), records::kFormatVersion);
}

// The unfinished job goes on where it stopped: the shard that was pending
// is leased, and the report that completes the job merges the partial table
// stored in format 0 with the new ones.
TEST_F(RegistryFormatTest, AnUnfinishedJobCompletesAfterTheOpen) {
  std::unique_ptr<Registry> r = Open();
  ASSERT_NE(r, nullptr);
  auto lease = r->LeaseShard("worker-new", "job-000002");
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_TRUE(lease->has_value());
  EXPECT_EQ((*lease)->lease_id, "job-000002/2/1");
  for (int64_t shard : {int64_t{1}, int64_t{2}}) {
    ShardReport report;
    report.lease_id = shard == 1 ? "job-000002/1/2" : "job-000002/2/1";
    report.worker_id = shard == 1 ? "worker-b2" : "worker-new";
    report.job_id = "job-000002";
    report.shard_index = shard;
    report.model = "tinycode-b";
    report.table.layer_begin = 0;
    report.table.layer_end = 12;
    report.table.samples = 1;
    report.table.tuples = kTuples;
    for (int64_t l = 0; l < 12; ++l) {
      std::vector<double> row;
      for (int64_t t = 0; t < 4; ++t) row.push_back(Value(shard, l, t));
      report.table.s.push_back(row);
    }
    auto result = r->ReportShard(report);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->job_done, shard == 2);
  }
  auto table = r->GetTable("tinycode-b", 0);
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->version, 1u);
  EXPECT_EQ(table->table.samples, 3);
  for (int64_t l = 0; l < 12; ++l) {
    for (int64_t t = 0; t < 4; ++t) {
      EXPECT_DOUBLE_EQ(table->table.s[l][t], MeanOverSamples(3, l, t)) << l << " " << t;
    }
  }
}

}  // namespace
}  // namespace moend::registry

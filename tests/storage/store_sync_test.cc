// "Every acknowledged write is synced", checked where a kill -9 cannot tell
// (it keeps the page cache): this binary and the moend-registry it starts run
// with tests/util/sync_shim.c preloaded (ctest sets LD_PRELOAD), which counts
// the bytes written to the RocksDB WAL and which of them fsync/fdatasync
// covered. After each acknowledged call, the call's bytes are in the WAL and
// none is unsynced. Two controls show the check can fail: a store opened
// with sync_writes = false, and a registry whose syncs the shim turns into
// no-ops.
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "services/registry/registry_client.h"
#include "storage/store.h"
#include "tests/registry/registry_test_util.h"
#include "tests/storage/temp_dir.h"
#include "tests/util/child_process.h"
#include "tests/util/sync_shim.h"

namespace moend {
namespace {

using registry::testing::ShardRows;
using registry::testing::SmallTuples;
using registry::testing::TinyConfigPath;
using testing::TempDir;

struct Counts {
  uint64_t wal_opens, wal_bytes, unsynced, closed_unsynced, syncs;
};

Counts Read(const SyncShimState* s) {
  return {__atomic_load_n(&s->wal_opens, __ATOMIC_SEQ_CST),
          __atomic_load_n(&s->wal_bytes, __ATOMIC_SEQ_CST),
          __atomic_load_n(&s->unsynced_bytes, __ATOMIC_SEQ_CST),
          __atomic_load_n(&s->closed_unsynced_bytes, __ATOMIC_SEQ_CST),
          __atomic_load_n(&s->syncs, __ATOMIC_SEQ_CST)};
}

// This process's shim counters; null when the shim is not preloaded.
SyncShimState* LocalShim() {
  using StateFn = SyncShimState* (*)();
  auto fn = reinterpret_cast<StateFn>(dlsym(RTLD_DEFAULT, "moend_sync_shim_state"));
  return fn != nullptr ? fn() : nullptr;
}

constexpr char kNotLoaded[] =
    "tests/util/sync_shim.c is not preloaded: run this test with ctest, or with "
    "LD_PRELOAD=build/tests/libmoend_sync_shim.so";

// Runs `call` (an acknowledged write) and checks that it reached the WAL and
// that every WAL byte is synced when it returns.
void ExpectSynced(const SyncShimState* shim, const std::string& what,
                  const std::function<absl::Status()>& call) {
  const Counts before = Read(shim);
  const absl::Status s = call();
  ASSERT_TRUE(s.ok()) << what << ": " << s;
  const Counts after = Read(shim);
  EXPECT_GT(after.wal_bytes, before.wal_bytes) << what << " wrote nothing to the WAL";
  EXPECT_GT(after.syncs, before.syncs) << what << " was acknowledged without a sync";
  EXPECT_EQ(after.unsynced, 0u) << what << " was acknowledged with WAL bytes not synced";
  EXPECT_EQ(after.closed_unsynced, before.closed_unsynced) << what << ": a WAL closed unsynced";
}

class StoreSyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    shim_ = LocalShim();
    ASSERT_NE(shim_, nullptr) << kNotLoaded;
    ASSERT_EQ(::setenv("MOEND_SYNC_SHIM_DIR", db_.c_str(), 1), 0);
  }
  void TearDown() override { ::unsetenv("MOEND_SYNC_SHIM_DIR"); }

  TempDir dir_;
  const std::string db_ = dir_.Sub("db");
  SyncShimState* shim_ = nullptr;
};

TEST_F(StoreSyncTest, EveryAcknowledgedWriteIsSyncedToTheWal) {
  const uint64_t opens = Read(shim_).wal_opens;
  auto store = storage::Store::Open({.path = db_});
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_GT(Read(shim_).wal_opens, opens) << "the shim did not see the store open its WAL";
  for (int i = 0; i < 20; ++i) {
    const std::string key = absl::StrCat("k", i);
    ExpectSynced(shim_, "Put " + key,
                 [&] { return (*store)->Put(storage::Column::kJobs, key, std::string(100, 'v')); });
    storage::WriteBatch batch;
    batch.Put(storage::Column::kModels, key, "model");
    batch.Put(storage::Column::kTables, key, "table");
    batch.Delete(storage::Column::kFeed, key);
    ExpectSynced(shim_, "Write " + key, [&] { return (*store)->Write(batch); });
    ExpectSynced(shim_, "Delete " + key,
                 [&] { return (*store)->Delete(storage::Column::kJobs, key); });
  }
}

// The control: the same writes without syncing are seen as unsynced.
TEST_F(StoreSyncTest, WritesOfAStoreThatDoesNotSyncAreSeenUnsynced) {
  auto store = storage::Store::Open({.path = db_, .sync_writes = false});
  ASSERT_TRUE(store.ok()) << store.status();
  const Counts before = Read(shim_);
  ASSERT_TRUE((*store)->Put(storage::Column::kJobs, "k", std::string(100, 'v')).ok());
  const Counts after = Read(shim_);
  EXPECT_GT(after.wal_bytes, before.wal_bytes);
  EXPECT_GT(after.unsynced, 0u) << "the shim cannot tell an unsynced write";
  EXPECT_EQ(after.syncs, before.syncs);
}

// The registry binary, the shim preloaded into it with its counters in a file
// this test maps.
class SyncedRegistry {
 public:
  SyncedRegistry(const TempDir& dir, bool noop_syncs) {
    const std::string db = dir.Sub("db"), counters = dir.Sub("sync-counters");
    std::vector<std::string> env = {"MOEND_SYNC_SHIM_DIR=" + db, "MOEND_SYNC_SHIM_FILE=" + counters};
    if (noop_syncs) env.push_back("MOEND_SYNC_SHIM_NOOP=1");
    // LD_PRELOAD is inherited from this process.
    process_ = std::make_unique<testing::ChildProcess>(
        MOEND_REGISTRY_BIN, std::vector<std::string>{"--db", db, "--listen", "127.0.0.1:0"},
        dir.Sub("registry.log"), env);
    address_ = process_->WaitForLine("listening on ", absl::Seconds(60));
    const int fd = ::open(counters.c_str(), O_RDONLY);
    if (fd >= 0) {
      void* p = ::mmap(nullptr, sizeof(SyncShimState), PROT_READ, MAP_SHARED, fd, 0);
      if (p != MAP_FAILED) state_ = static_cast<SyncShimState*>(p);
      ::close(fd);
    }
    auto client = registry::RegistryClient::Connect({.target = address_});
    if (client.ok()) client_ = std::move(client).value();
  }
  ~SyncedRegistry() {
    if (state_ != nullptr) ::munmap(state_, sizeof(SyncShimState));
  }
  const SyncShimState* state() const { return state_; }
  registry::RegistryClient& client() { return *client_; }
  std::string Diagnose() const { return address_.empty() ? process_->output() : ""; }
  bool ready() const { return !address_.empty() && state_ != nullptr && client_ != nullptr; }

 private:
  std::unique_ptr<testing::ChildProcess> process_;
  std::string address_;
  SyncShimState* state_ = nullptr;
  std::unique_ptr<registry::RegistryClient> client_;
};

TEST(RegistrySyncTest, EveryAcknowledgedCallOfTheRegistryBinaryIsSynced) {
  ASSERT_NE(LocalShim(), nullptr) << kNotLoaded;
  TempDir dir;
  SyncedRegistry registry(dir, /*noop_syncs=*/false);
  ASSERT_TRUE(registry.ready()) << "registry or shim counters missing: " << registry.Diagnose();
  ASSERT_GT(Read(registry.state()).wal_opens, 0u) << "the shim did not see the WAL opened";
  registry::RegistryClient& client = registry.client();
  ExpectSynced(registry.state(), "RegisterModel",
               [&] { return client.RegisterModelFromFile("tinycode", TinyConfigPath()).status(); });
  std::string job_id;
  ExpectSynced(registry.state(), "SubmitJob", [&] {
    auto job = client.SubmitJob({.model = "tinycode", .tuples = SmallTuples(), .seq_len = 512,
                                 .num_samples = 2, .samples_per_shard = 1});
    if (job.ok()) job_id = job->spec.job_id;
    return job.status();
  });
  for (int shard = 0; shard < 2; ++shard) {  // the second report completes the job
    registry::Lease lease;
    ExpectSynced(registry.state(), "LeaseShard", [&] {
      auto l = client.LeaseShard("w", job_id);
      if (!l.ok()) return l.status();
      if (!l->has_value()) return absl::NotFoundError("nothing to lease");
      lease = **l;
      return absl::OkStatus();
    });
    ExpectSynced(registry.state(), "Heartbeat",
                 [&] { return client.Heartbeat(lease.lease_id, "w").status(); });
    ExpectSynced(registry.state(), "ReportShard", [&] {
      return client.ReportLease(lease, ShardRows(lease.shard, SmallTuples().size())).status();
    });
  }
  EXPECT_EQ(client.GetModel("tinycode")->version, 1u);
  SensitivityTable table = client.GetTable("tinycode", 1)->table;
  ExpectSynced(registry.state(), "PublishTable",
               [&] { return client.PublishTable(table).status(); });
}

// The control: a registry whose syncs do nothing is seen as unsynced.
TEST(RegistrySyncTest, ARegistryWhoseSyncsDoNothingIsSeenUnsynced) {
  ASSERT_NE(LocalShim(), nullptr) << kNotLoaded;
  TempDir dir;
  SyncedRegistry registry(dir, /*noop_syncs=*/true);
  ASSERT_TRUE(registry.ready()) << "registry or shim counters missing: " << registry.Diagnose();
  ASSERT_TRUE(registry.client().RegisterModelFromFile("tinycode", TinyConfigPath()).ok());
  EXPECT_GT(Read(registry.state()).unsynced, 0u) << "the shim cannot tell an unsynced call";
}

}  // namespace
}  // namespace moend

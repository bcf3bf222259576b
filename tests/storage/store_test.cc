#include "storage/store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/storage/temp_dir.h"
#include "tests/util/mount_sandbox.h"

namespace moend::storage {
namespace {

using ::moend::testing::MountSandbox;
using ::moend::testing::TempDir;

std::unique_ptr<Store> OpenOrDie(const std::string& path) {
  auto store = Store::Open({.path = path});
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(store).value() : nullptr;
}

TEST(StoreTest, PutGetAcrossColumnsAreSeparate) {
  TempDir dir;
  auto store = OpenOrDie(dir.Sub("db"));
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Put(Column::kModels, "m", "model-record").ok());
  ASSERT_TRUE(store->Put(Column::kTables, "m", "table-record").ok());
  EXPECT_EQ(*store->Get(Column::kModels, "m"), "model-record");
  EXPECT_EQ(*store->Get(Column::kTables, "m"), "table-record");
  auto missing = store->Get(Column::kJobs, "m");
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  EXPECT_NE(missing.status().message().find("jobs"), std::string::npos);
}

TEST(StoreTest, DataSurvivesReopen) {
  TempDir dir;
  {
    auto store = OpenOrDie(dir.Sub("db"));
    ASSERT_TRUE(store->Put(Column::kFeed, "m/1", "v1").ok());
  }
  auto store = OpenOrDie(dir.Sub("db"));
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(*store->Get(Column::kFeed, "m/1"), "v1");
}

TEST(StoreTest, BatchIsAtomicAndOrdered) {
  TempDir dir;
  auto store = OpenOrDie(dir.Sub("db"));
  ASSERT_TRUE(store->Put(Column::kJobs, "gone", "x").ok());
  WriteBatch b;
  b.Put(Column::kJobs, "job/1", "a");
  b.Put(Column::kRuns, "job/1", "run");
  b.Put(Column::kJobs, "job/1", "b");  // later op wins
  b.Delete(Column::kJobs, "gone");
  ASSERT_TRUE(store->Write(b).ok());
  EXPECT_EQ(*store->Get(Column::kJobs, "job/1"), "b");
  EXPECT_EQ(*store->Get(Column::kRuns, "job/1"), "run");
  EXPECT_TRUE(absl::IsNotFound(store->Get(Column::kJobs, "gone").status()));
  EXPECT_TRUE(store->Write(WriteBatch()).ok());
}

TEST(StoreTest, ScanReturnsPrefixInKeyOrder) {
  TempDir dir;
  auto store = OpenOrDie(dir.Sub("db"));
  for (const char* k : {"a/2", "a/1", "b/1", "a/10", "a"}) {
    ASSERT_TRUE(store->Put(Column::kFeed, k, std::string("v") + k).ok());
  }
  auto kvs = store->Scan(Column::kFeed, "a/");
  ASSERT_TRUE(kvs.ok());
  ASSERT_EQ(kvs->size(), 3u);
  EXPECT_EQ((*kvs)[0].key, "a/1");
  EXPECT_EQ((*kvs)[1].key, "a/10");
  EXPECT_EQ((*kvs)[2].key, "a/2");
  EXPECT_EQ((*kvs)[2].value, "va/2");
  EXPECT_EQ(store->Scan(Column::kFeed, "")->size(), 5u);
  EXPECT_TRUE(store->Scan(Column::kFeed, "c")->empty());
}

TEST(StoreTest, OpenRejectsAFile) {
  TempDir dir;
  std::ofstream(dir.Sub("file")) << "not a db";
  auto store = Store::Open({.path = dir.Sub("file")});
  ASSERT_FALSE(store.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(store.status())) << store.status();
  EXPECT_NE(store.status().message().find(dir.Sub("file")), std::string::npos);
}

TEST(StoreTest, OpenRejectsEmptyPathAndMissingWhenNotCreating) {
  EXPECT_TRUE(absl::IsInvalidArgument(Store::Open({.path = ""}).status()));
  TempDir dir;
  auto store = Store::Open({.path = dir.Sub("nope"), .create_if_missing = false});
  EXPECT_TRUE(absl::IsNotFound(store.status())) << store.status();
}

TEST(StoreTest, OpenRejectsReadOnlyFolder) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.Sub("ro").c_str(), 0500), 0);
  ::moend::testing::ScopedUnmount unmount(dir.Sub("ro"));
  if (::geteuid() == 0) {
    // Root writes any folder whatever its mode: make it a read-only mount.
    if (std::string why = MountSandbox::Enter(); !why.empty()) {
      GTEST_SKIP() << "as root only a read-only mount is read-only, and " << why;
    }
    ASSERT_EQ(::mkdir(dir.Sub("src").c_str(), 0700), 0);
    ASSERT_EQ(MountSandbox::BindReadOnly(dir.Sub("src"), dir.Sub("ro")), "");
  }
  auto store = Store::Open({.path = dir.Sub("ro")});
  EXPECT_TRUE(absl::IsPermissionDenied(store.status())) << store.status();
  EXPECT_NE(store.status().message().find(dir.Sub("ro")), std::string::npos) << store.status();
  ::chmod(dir.Sub("ro").c_str(), 0700);
}

TEST(StoreTest, OpenReportsCorruptDatabase) {
  TempDir dir;
  { ASSERT_NE(OpenOrDie(dir.Sub("db")), nullptr); }
  std::ofstream(dir.Sub("db/CURRENT"), std::ios::trunc) << "garbage";  // no newline
  auto store = Store::Open({.path = dir.Sub("db")});
  ASSERT_FALSE(store.ok());
  EXPECT_TRUE(absl::IsDataLoss(store.status())) << store.status();
  EXPECT_NE(store.status().message().find("corrupt"), std::string::npos);
}

TEST(StoreTest, SecondOpenOfSameFolderFailsClearly) {
  TempDir dir;
  auto first = OpenOrDie(dir.Sub("db"));
  auto second = Store::Open({.path = dir.Sub("db")});
  ASSERT_FALSE(second.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(second.status())) << second.status();
}

}  // namespace
}  // namespace moend::storage

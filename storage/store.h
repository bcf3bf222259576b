// The registry's durable key-value store: RocksDB with one column family per
// kind of record. This is the only place RocksDB appears; callers see
// absl::Status and plain strings. Every write is synced to the WAL (fdatasync)
// before it is acknowledged, so an acknowledged write survives a kill -9 of
// the process and a crash of the machine (tests/storage/store_sync_test.cc).
//
// A full disk, whoever filled it (the store's own writes or another file):
// - The write that meets it fails with ResourceExhausted: "writing N records
//   to <folder>: ... No space left on device (the disk is full; nothing was
//   stored; free at least 1 MiB on the disk that holds the store folder: a
//   running store then resumes writes by itself)". It did not land; every
//   write acknowledged before it did.
// - Later writes fail fast with the same status. At most once a second a
//   write checks the disk: with at least 1 MiB free (and the file system
//   writable) the store closes and reopens the database, replaying the WAL,
//   and writes go on; with less, it does not try, and keeps the instance that
//   serves reads. Reads go on throughout, unless a reopen itself failed (then
//   reads and writes return that failure until a later reopen succeeds).
// - Open with less than 1 MiB free fails with ResourceExhausted ("... the
//   disk is full; nothing was stored; free at least 1 MiB on the disk ...")
//   before RocksDB is asked: below that, whether an open succeeds depends on
//   the last few KiB. Opening does not first flush the WAL to a table file,
//   so it needs room for a new WAL, MANIFEST and OPTIONS file only (tens of
//   KiB), not as much as the WAL holds: freeing 1 MiB is enough for a store
//   that filled its own disk.
#ifndef MOEND_STORAGE_STORE_H_
#define MOEND_STORAGE_STORE_H_

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moend::storage {

// Column families. Keys are bytes chosen by the caller.
enum class Column {
  kModels,  // model name -> model record
  kRuns,    // run id -> completed calibration run
  kTables,  // "<model>/<version>" -> sensitivity table
  kJobs,    // jobs, their shards and shard reports
  kFeed,    // "<model>/<version>" -> change-feed entry
  kMeta,    // facts about the database itself (the registry's record format)
};
inline constexpr int kNumColumns = 6;
// "models", "runs", "tables", "jobs", "feed", "meta".
std::string_view ColumnName(Column c);

struct StoreOptions {
  // Folder of the database; created if missing (with its parents).
  std::string path;
  // Create the folder and column families when absent. Default true.
  bool create_if_missing = true;
  // Sync the WAL on every write before returning. Default true; only
  // benchmarks that want to measure the difference turn it off.
  bool sync_writes = true;
};

// An atomic group of writes: all of them land, or none.
class WriteBatch {
 public:
  void Put(Column c, std::string key, std::string value) {
    ops_.push_back({c, std::move(key), std::move(value), false});
  }
  void Delete(Column c, std::string key) { ops_.push_back({c, std::move(key), {}, true}); }
  bool empty() const { return ops_.empty(); }
  size_t size() const { return ops_.size(); }

  struct Op {
    Column column;
    std::string key;
    std::string value;
    bool is_delete;
  };
  const std::vector<Op>& ops() const { return ops_; }

 private:
  std::vector<Op> ops_;
};

struct KeyValue {
  std::string key;
  std::string value;
};

// Thread-safe: any number of threads may call Get, Write and Scan at once;
// concurrent synced writes share one WAL sync (RocksDB's group commit).
class Store {
 public:
  // Opens (creating when allowed) the database at options.path. Errors:
  // InvalidArgument for an empty path, FailedPrecondition when the path is not
  // a folder or another process holds the database, PermissionDenied for a
  // read-only folder, ResourceExhausted for a full disk (see above), DataLoss
  // for a corrupt database, Unavailable for other I/O failures. Messages name
  // the path. A database created before a column existed gets it (empty) when
  // create_if_missing is set.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const StoreOptions& options);

  virtual ~Store() = default;

  // The value under `key`, or NotFound naming the column and key.
  virtual absl::StatusOr<std::string> Get(Column c, std::string_view key) const = 0;
  // One synced write.
  virtual absl::Status Put(Column c, std::string_view key, std::string_view value) = 0;
  virtual absl::Status Delete(Column c, std::string_view key) = 0;
  // All of `batch` atomically, synced. An empty batch is OK and writes nothing.
  virtual absl::Status Write(const WriteBatch& batch) = 0;
  // Every key starting with `prefix`, in key order ("" = the whole column).
  virtual absl::StatusOr<std::vector<KeyValue>> Scan(Column c, std::string_view prefix) const = 0;

  const std::string& path() const { return path_; }

 protected:
  explicit Store(std::string path) : path_(std::move(path)) {}

 private:
  std::string path_;
};

}  // namespace moend::storage

#endif  // MOEND_STORAGE_STORE_H_

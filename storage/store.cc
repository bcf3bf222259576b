#include "storage/store.h"

#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <array>
#include <cstdarg>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"

namespace moend::storage {
namespace {

constexpr std::array<std::string_view, kNumColumns> kColumnNames = {
    "models", "runs", "tables", "jobs", "feed", "meta"};

// RocksDB status -> absl::Status, naming what was being done.
absl::Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat(std::string(what), ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  if (s.IsNotSupported()) return absl::UnimplementedError(msg);
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) return absl::UnavailableError(msg);
  if (s.IsIOError()) {
    if (absl::StrContains(s.ToString(), "lock")) {
      return absl::FailedPreconditionError(
          absl::StrCat(msg, " (is another process using this database?)"));
    }
    if (absl::StrContains(s.ToString(), "Permission denied") ||
        absl::StrContains(s.ToString(), "Read-only file system")) {
      return absl::PermissionDeniedError(
          absl::StrCat(msg, " (the database folder is not writable; nothing was stored)"));
    }
    if (s.IsNoSpace() || absl::StrContains(s.ToString(), "No space left") ||
        absl::StrContains(s.ToString(), "File too large")) {
      return absl::ResourceExhaustedError(
          absl::StrCat(msg, " (the disk is full; nothing was stored; free at least 1 MiB on the "
                            "disk that holds the store folder: a running store then resumes "
                            "writes by itself)"));
    }
    return absl::UnavailableError(msg);
  }
  return absl::InternalError(msg);
}

// RocksDB's own log goes to stderr (warnings and errors only), not to a LOG
// file in the database folder: on a full disk that file fails first, and
// Debian's librocksdb (built with assertions) aborts on the logger's next
// line.
class StderrLogger final : public rocksdb::Logger {
 public:
  StderrLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    char line[1024];
    std::vsnprintf(line, sizeof(line), format, ap);
    std::fprintf(stderr, "rocksdb: %s\n", line);
  }
};

// Free space below which a failed store does not try to reopen (see
// RecoverIfFailed): an open writes a new WAL, MANIFEST and OPTIONS file,
// about 40 KiB.
constexpr uint64_t kReopenFreeBytes = 1 << 20;

// Whether the file system holding `path` has at least kReopenFreeBytes free
// (true when that cannot be told).
bool RoomToOpen(const std::string& path) {
  struct statvfs fs;
  if (::statvfs(path.c_str(), &fs) != 0) return true;
  return static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize >= kReopenFreeBytes;
}

// Whether the file system holding `path` is writable with at least
// kReopenFreeBytes free (true when that cannot be told).
bool RoomToReopen(const std::string& path) {
  struct statvfs fs;
  if (::statvfs(path.c_str(), &fs) == 0 && (fs.f_flag & ST_RDONLY)) return false;
  return RoomToOpen(path);
}

// An open RocksDB with one handle per column (handles[0] is "default").
struct OpenDb {
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
};

absl::StatusOr<OpenDb> OpenRocks(const std::string& path, bool create_if_missing) {
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = create_if_missing;
  db_options.create_missing_column_families = create_if_missing;
  db_options.paranoid_checks = true;
  db_options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  db_options.info_log = std::make_shared<StderrLogger>();
  // Opening replays the WAL into memory and keeps it, instead of first
  // flushing it to a table file: that flush needs about as much free space as
  // the WAL holds, so a store that filled its disk with its own writes could
  // not open again until that much was freed. Now opening needs only room for
  // a new WAL, MANIFEST and OPTIONS file (well under kReopenFreeBytes).
  db_options.avoid_flush_during_recovery = true;
  // RocksDB reserves 4 MiB for a new MANIFEST by default (fallocate), more
  // than kReopenFreeBytes: an open with 1 MiB free would take it all and
  // then fail to write its OPTIONS file. The manifest of a moend store is a
  // few KiB.
  db_options.manifest_preallocation_size = 64 << 10;

  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  families.emplace_back(rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions());
  for (std::string_view name : kColumnNames) {
    families.emplace_back(std::string(name), rocksdb::ColumnFamilyOptions());
  }
  OpenDb open;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, path, families, &open.handles, &raw);
  if (!s.ok()) {
    absl::Status st = FromRocks(s, absl::StrCat("opening store '", path, "'"));
    if (absl::IsDataLoss(st)) {
      return absl::DataLossError(absl::StrCat(st.message(), " (the database is corrupt)"));
    }
    if (absl::IsInvalidArgument(st)) {
      // Missing column families or options mismatch: not a moend store.
      return absl::FailedPreconditionError(
          absl::StrCat(st.message(), " (is this a moend registry database?)"));
    }
    return st;
  }
  open.db.reset(raw);
  return open;
}

void CloseRocks(OpenDb& open) {
  for (rocksdb::ColumnFamilyHandle* h : open.handles) open.db->DestroyColumnFamilyHandle(h);
  open.handles.clear();
  open.db->Close().PermitUncheckedError();
  open.db.reset();
}

class RocksStore final : public Store {
 public:
  RocksStore(std::string path, OpenDb open, bool sync)
      : Store(std::move(path)), open_(std::move(open)) {
    write_options_.sync = sync;
  }

  ~RocksStore() override {
    absl::WriterMutexLock lock(&mu_);
    if (open_.db) CloseRocks(open_);
  }

  absl::StatusOr<std::string> Get(Column c, std::string_view key) const override {
    absl::ReaderMutexLock lock(&mu_);
    if (!open_.db) return failure_;
    std::string value;
    rocksdb::Status s = open_.db->Get(rocksdb::ReadOptions(), handle(c), key, &value);
    if (s.IsNotFound()) {
      return absl::NotFoundError(absl::StrCat("no key '", std::string(key), "' in ", std::string(ColumnName(c))));
    }
    if (!s.ok()) return FromRocks(s, absl::StrCat("reading '", std::string(key), "' from ", std::string(ColumnName(c))));
    return value;
  }

  absl::Status Put(Column c, std::string_view key, std::string_view value) override {
    WriteBatch b;
    b.Put(c, std::string(key), std::string(value));
    return Write(b);
  }

  absl::Status Delete(Column c, std::string_view key) override {
    WriteBatch b;
    b.Delete(c, std::string(key));
    return Write(b);
  }

  absl::Status Write(const WriteBatch& batch) override {
    if (batch.empty()) return absl::OkStatus();
    const std::string what = absl::StrCat("writing ", batch.size(), " records to ", path());
    MOEND_RETURN_IF_ERROR(RecoverIfFailed());
    absl::ReaderMutexLock lock(&mu_);
    if (!failure_.ok()) return failure_;
    rocksdb::WriteBatch wb;
    for (const WriteBatch::Op& op : batch.ops()) {
      rocksdb::Status s = op.is_delete ? wb.Delete(handle(op.column), op.key)
                                       : wb.Put(handle(op.column), op.key, op.value);
      if (!s.ok()) return FromRocks(s, "building write batch");
    }
    rocksdb::Status s = open_.db->Write(write_options_, &wb);
    absl::Status status = FromRocks(s, what);
    if (s.IsIOError() || s.IsNoSpace()) {
      // The write did not land. RocksDB must not see another write on this
      // instance (its WAL writer is in an error state): later writes fail
      // fast with this status until a reopen succeeds.
      absl::MutexLock failed(&failure_mu_);
      if (failed_.ok()) failed_ = status;
    }
    return status;
  }

  absl::StatusOr<std::vector<KeyValue>> Scan(Column c, std::string_view prefix) const override {
    absl::ReaderMutexLock lock(&mu_);
    if (!open_.db) return failure_;
    std::vector<KeyValue> out;
    std::unique_ptr<rocksdb::Iterator> it(open_.db->NewIterator(rocksdb::ReadOptions(), handle(c)));
    for (it->Seek(prefix); it->Valid(); it->Next()) {
      if (!it->key().starts_with(rocksdb::Slice(prefix.data(), prefix.size()))) break;
      out.push_back({it->key().ToString(), it->value().ToString()});
    }
    if (!it->status().ok()) {
      return FromRocks(it->status(), absl::StrCat("scanning ", std::string(ColumnName(c))));
    }
    return out;
  }

 private:
  rocksdb::ColumnFamilyHandle* handle(Column c) const {
    return open_.handles[static_cast<size_t>(c) + 1];  // [0] is "default"
  }

  // After a failed write (disk full, folder made read-only): closes and
  // reopens the database, at most once a second, so that writes continue
  // once the cause is gone, without a restart. Reopening replays the WAL:
  // every acknowledged write is still there, the failed one is not. While
  // the file system is read-only or has less than kReopenFreeBytes free, the
  // instance that failed is kept open instead, so that reads go on.
  absl::Status RecoverIfFailed() {
    {
      absl::MutexLock failed(&failure_mu_);
      if (failed_.ok()) return absl::OkStatus();
      if (absl::Now() < next_recovery_) return failed_;
      next_recovery_ = absl::Now() + absl::Seconds(1);
    }
    absl::WriterMutexLock lock(&mu_);
    absl::MutexLock failed(&failure_mu_);
    if (failed_.ok()) return absl::OkStatus();
    if (open_.db && !RoomToReopen(path())) return failed_;
    if (open_.db) CloseRocks(open_);
    absl::StatusOr<OpenDb> reopened = OpenRocks(path(), /*create_if_missing=*/false);
    if (!reopened.ok()) {
      failure_ = absl::Status(failed_.code(),
                              absl::StrCat(failed_.message(), "; reopening the store failed: ",
                                           reopened.status().message()));
      return failure_;
    }
    open_ = std::move(reopened).value();
    failure_ = absl::OkStatus();
    failed_ = absl::OkStatus();
    return absl::OkStatus();
  }

  mutable absl::Mutex mu_;  // writer-held only to close and reopen open_
  OpenDb open_ ABSL_GUARDED_BY(mu_);
  // Set when open_ was closed and could not be reopened: what reads and
  // writes return until a reopen succeeds.
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  rocksdb::WriteOptions write_options_;
  absl::Mutex failure_mu_;
  absl::Status failed_ ABSL_GUARDED_BY(failure_mu_);  // the write error; OK = healthy
  absl::Time next_recovery_ ABSL_GUARDED_BY(failure_mu_) = absl::InfinitePast();
};

}  // namespace

std::string_view ColumnName(Column c) { return kColumnNames[static_cast<size_t>(c)]; }

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  const std::string& path = options.path;
  if (path.empty()) return absl::InvalidArgumentError("store path is empty");
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) {
    if (!std::filesystem::is_directory(path, ec)) {
      return absl::FailedPreconditionError(
          absl::StrCat("store path '", path, "' exists and is not a folder"));
    }
    if (::access(path.c_str(), R_OK | W_OK | X_OK) != 0) {
      return absl::PermissionDeniedError(absl::StrCat(
          "store folder '", path, "' is not readable and writable: ", std::strerror(errno)));
    }
  } else if (!options.create_if_missing) {
    return absl::NotFoundError(absl::StrCat("store folder '", path, "' does not exist"));
  } else {
    std::filesystem::create_directories(path, ec);
    if (ec) {
      if (ec == std::errc::permission_denied || ec == std::errc::read_only_file_system) {
        return absl::PermissionDeniedError(
            absl::StrCat("cannot create store folder '", path, "': ", ec.message()));
      }
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create store folder '", path, "': ", ec.message()));
    }
  }

  // Below kReopenFreeBytes an open may or may not succeed, depending on the
  // last few KiB (RocksDB opens even when it cannot write its OPTIONS file):
  // refuse it, with the error a write on a full disk gets.
  if (!RoomToOpen(path)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "opening store '", path, "': less than 1 MiB free (the disk is full; nothing was "
        "stored; free at least 1 MiB on the disk that holds the store folder and start again)"));
  }
  MOEND_ASSIGN_OR_RETURN(OpenDb open, OpenRocks(path, options.create_if_missing));
  return std::unique_ptr<Store>(new RocksStore(path, std::move(open), options.sync_writes));
}

}  // namespace moend::storage

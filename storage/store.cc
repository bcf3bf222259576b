#include "storage/store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"

namespace moend::storage {
namespace {

constexpr std::array<std::string_view, kNumColumns> kColumnNames = {"models", "runs", "tables",
                                                                    "jobs", "feed"};

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
      return absl::PermissionDeniedError(msg);
    }
    return absl::UnavailableError(msg);
  }
  return absl::InternalError(msg);
}

class RocksStore final : public Store {
 public:
  RocksStore(std::string path, std::unique_ptr<rocksdb::DB> db,
             std::vector<rocksdb::ColumnFamilyHandle*> handles, bool sync)
      : Store(std::move(path)), db_(std::move(db)), handles_(std::move(handles)) {
    write_options_.sync = sync;
  }

  ~RocksStore() override {
    for (rocksdb::ColumnFamilyHandle* h : handles_) db_->DestroyColumnFamilyHandle(h);
    db_->Close().PermitUncheckedError();
  }

  absl::StatusOr<std::string> Get(Column c, std::string_view key) const override {
    std::string value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), handle(c), key, &value);
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
    rocksdb::WriteBatch wb;
    for (const WriteBatch::Op& op : batch.ops()) {
      rocksdb::Status s = op.is_delete ? wb.Delete(handle(op.column), op.key)
                                       : wb.Put(handle(op.column), op.key, op.value);
      if (!s.ok()) return FromRocks(s, "building write batch");
    }
    return FromRocks(db_->Write(write_options_, &wb),
                     absl::StrCat("writing ", batch.size(), " records to ", path()));
  }

  absl::StatusOr<std::vector<KeyValue>> Scan(Column c, std::string_view prefix) const override {
    std::vector<KeyValue> out;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), handle(c)));
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
    return handles_[static_cast<size_t>(c) + 1];  // [0] is "default"
  }

  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  rocksdb::WriteOptions write_options_;
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

  rocksdb::DBOptions db_options;
  db_options.create_if_missing = options.create_if_missing;
  db_options.create_missing_column_families = options.create_if_missing;
  db_options.paranoid_checks = true;
  db_options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  db_options.keep_log_file_num = 2;

  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  families.emplace_back(rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions());
  for (std::string_view name : kColumnNames) {
    families.emplace_back(std::string(name), rocksdb::ColumnFamilyOptions());
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, path, families, &handles, &raw);
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
  return std::unique_ptr<Store>(
      new RocksStore(path, std::unique_ptr<rocksdb::DB>(raw), std::move(handles),
                     options.sync_writes));
}

}  // namespace moend::storage

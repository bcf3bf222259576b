// A storage::Store that passes every call to a real store, for tests that
// watch or fail writes: override Write (Put and Delete go through it).
#ifndef MOEND_TESTS_REGISTRY_FORWARDING_STORE_H_
#define MOEND_TESTS_REGISTRY_FORWARDING_STORE_H_

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "storage/store.h"

namespace moend::registry::testing {

class ForwardingStore : public storage::Store {
 public:
  explicit ForwardingStore(std::unique_ptr<storage::Store> inner)
      : Store(inner->path()), inner_(std::move(inner)) {}

  absl::StatusOr<std::string> Get(storage::Column c, std::string_view key) const override {
    return inner_->Get(c, key);
  }
  absl::Status Put(storage::Column c, std::string_view key, std::string_view value) override {
    storage::WriteBatch b;
    b.Put(c, std::string(key), std::string(value));
    return Write(b);
  }
  absl::Status Delete(storage::Column c, std::string_view key) override {
    storage::WriteBatch b;
    b.Delete(c, std::string(key));
    return Write(b);
  }
  absl::Status Write(const storage::WriteBatch& batch) override { return inner_->Write(batch); }
  absl::StatusOr<std::vector<storage::KeyValue>> Scan(storage::Column c,
                                                      std::string_view prefix) const override {
    return inner_->Scan(c, prefix);
  }

 private:
  std::unique_ptr<storage::Store> inner_;
};

}  // namespace moend::registry::testing

#endif  // MOEND_TESTS_REGISTRY_FORWARDING_STORE_H_

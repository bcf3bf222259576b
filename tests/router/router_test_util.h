// Helpers shared by the router tests: sensitivity tables shaped like the
// shipped model, and an in-memory table source with a change feed.
#ifndef MOEND_TESTS_ROUTER_ROUTER_TEST_UTIL_H_
#define MOEND_TESTS_ROUTER_ROUTER_TEST_UTIL_H_

#include <cmath>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/compression.h"
#include "core/sensitivity_table.h"
#include "services/router/table_source.h"

namespace moend::router::testing {

// A table with the shipped model's shape (12 layers, 2 KV heads, head dim
// 64, n = 4096) over a small grid; `seed` changes every value.
inline SensitivityTable MakeTable(const std::string& model, int seed) {
  SensitivityTable t;
  t.model = model;
  t.num_layers = 12;
  t.num_kv_heads = 2;
  t.head_dim = 64;
  t.seq_len = 4096;
  t.compression_point = 4096 - 256;
  t.samples = 4;
  t.tuples = {{1.0, 16, 16}, {1.0, 8, 8},  {1.0, 4, 4},   {0.5, 16, 16},
              {0.5, 8, 4},   {0.25, 4, 2}, {0.125, 2, 2}, {0.0625, 2, 2}};
  for (int64_t l = 0; l < t.num_layers; ++l) {
    std::vector<double> row;
    for (size_t i = 0; i < t.tuples.size(); ++i) {
      const double base = i == 0 ? 0.0 : 0.01 * static_cast<double>(i * i);
      const double wiggle = (std::sin(seed * 3.1 + l * 1.7 + i * 0.9) + 1.0) * 0.5;
      row.push_back(base * (1.0 + wiggle) * static_cast<double>(1 + (l * (seed + 1)) % 5));
    }
    t.s.push_back(row);
  }
  return t;
}

// MakeTable with per-(layer, KV head) rows and signals: head 0 of every
// layer is 4 times less sensitive than head 1, so that a per-head solve
// gives the heads of a layer different tuples.
inline SensitivityTable MakeHeadTable(const std::string& model, int seed) {
  SensitivityTable t = MakeTable(model, seed);
  for (int64_t l = 0; l < t.num_layers; ++l) {
    std::vector<std::vector<double>> heads;
    for (int64_t h = 0; h < t.num_kv_heads; ++h) {
      std::vector<double> row;
      for (double v : t.s[l]) row.push_back(v * (h == 0 ? 0.4 : 1.6));
      heads.push_back(row);
    }
    t.s_head.push_back(heads);
  }
  t.signals = {absl::StrCat("code: seed ", seed), "recall: synthetic"};
  return t;
}

// Tables in memory, with a change feed, and switches to make calls fail.
class FakeTableSource final : public TableSource {
 public:
  // Adds the next version of `table.model` (1, 2, ...) and returns it.
  uint64_t Publish(const SensitivityTable& table) {
    absl::MutexLock lock(&mu_);
    auto& versions = tables_[table.model];
    versions.push_back(table);
    return versions.size();
  }
  // The next `n` WaitForVersion calls fail with Unavailable.
  void FailNextWaits(int n) {
    absl::MutexLock lock(&mu_);
    failing_waits_ += n;
  }
  // While set, GetTable fails with Unavailable.
  void SetGetTableDown(bool down) {
    absl::MutexLock lock(&mu_);
    get_table_down_ = down;
  }
  int get_table_calls() const {
    absl::MutexLock lock(&mu_);
    return get_table_calls_;
  }
  int failed_waits() const {
    absl::MutexLock lock(&mu_);
    return failed_waits_;
  }

  absl::StatusOr<registry::VersionedTable> GetTable(const std::string& model,
                                                    uint64_t version) override {
    absl::MutexLock lock(&mu_);
    ++get_table_calls_;
    if (get_table_down_) return absl::UnavailableError("fake table source is down");
    auto it = tables_.find(model);
    if (it == tables_.end()) {
      return absl::NotFoundError(absl::StrCat("model '", model, "' is not registered"));
    }
    if (version == 0) version = it->second.size();
    if (version > it->second.size()) {
      return absl::NotFoundError(absl::StrCat("model '", model, "' has no table version ",
                                              version, "; the latest is ", it->second.size()));
    }
    return registry::VersionedTable{version, absl::StrCat("run-", version),
                                    it->second[version - 1]};
  }

  absl::StatusOr<uint64_t> WaitForVersion(const std::string& model, uint64_t after_version,
                                          absl::Duration timeout) override {
    absl::MutexLock lock(&mu_);
    if (failing_waits_ > 0) {
      --failing_waits_;
      ++failed_waits_;
      return absl::UnavailableError("fake change feed is down");
    }
    auto newer = [&] {
      auto it = tables_.find(model);
      return it != tables_.end() && it->second.size() > after_version;
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&newer), timeout)) {
      return absl::DeadlineExceededError("no new version");
    }
    return after_version + 1;
  }

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, std::deque<SensitivityTable>> tables_;
  int failing_waits_ = 0;
  int failed_waits_ = 0;
  bool get_table_down_ = false;
  int get_table_calls_ = 0;
};

}  // namespace moend::router::testing

#endif  // MOEND_TESTS_ROUTER_ROUTER_TEST_UTIL_H_

// Which shards LeaseShard may hand out, found without a scan: available
// shards (pending, or leased with a lapsed lease) ordered by (job sequence,
// shard index), with a copy per model for the model filter, and live leases
// ordered by expiry, which Expire moves to the available ones once they
// lapse. Every operation is O(log shards). Not thread-safe: the Registry's
// mutex guards it.
#ifndef MOEND_SERVICES_REGISTRY_SHARD_INDEX_H_
#define MOEND_SERVICES_REGISTRY_SHARD_INDEX_H_

#include <compare>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "absl/time/time.h"

namespace moend::registry {

class ShardIndex {
 public:
  struct Ref {
    int64_t sequence = 0;  // the job's submission order
    int64_t shard = 0;     // index within the job
    friend auto operator<=>(const Ref&, const Ref&) = default;
  };

  // A shard of `model` that may be leased now.
  void AddAvailable(const std::string& model, Ref ref);
  // A shard of `model` leased until `expiry`.
  void AddLease(const std::string& model, Ref ref, absl::Time expiry);
  // Forgets `ref` whether available or leased until `expiry` (its current
  // lease's expiry; ignored when it has none).
  void Remove(const std::string& model, Ref ref, absl::Time expiry);
  // Leases with expiry <= now become available.
  void Expire(absl::Time now);

  // The first available shard (lowest sequence, then index), of job
  // `sequence` when given, and of `model` when not empty.
  std::optional<Ref> First(std::optional<int64_t> sequence, const std::string& model) const;

  size_t available() const { return available_.size(); }
  size_t leased() const { return leases_.size(); }

 private:
  std::set<Ref> available_;
  std::map<std::string, std::set<Ref>> available_by_model_;
  std::map<std::pair<absl::Time, Ref>, std::string> leases_;  // -> model
};

}  // namespace moend::registry

#endif  // MOEND_SERVICES_REGISTRY_SHARD_INDEX_H_

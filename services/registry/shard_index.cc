#include "services/registry/shard_index.h"

namespace moend::registry {

void ShardIndex::AddAvailable(const std::string& model, Ref ref) {
  available_.insert(ref);
  available_by_model_[model].insert(ref);
}

void ShardIndex::AddLease(const std::string& model, Ref ref, absl::Time expiry) {
  leases_.emplace(std::make_pair(expiry, ref), model);
}

void ShardIndex::Remove(const std::string& model, Ref ref, absl::Time expiry) {
  available_.erase(ref);
  if (auto it = available_by_model_.find(model); it != available_by_model_.end()) {
    it->second.erase(ref);
    if (it->second.empty()) available_by_model_.erase(it);
  }
  leases_.erase({expiry, ref});
}

void ShardIndex::Expire(absl::Time now) {
  while (!leases_.empty() && leases_.begin()->first.first <= now) {
    auto node = leases_.extract(leases_.begin());
    AddAvailable(node.mapped(), node.key().second);
  }
}

std::optional<ShardIndex::Ref> ShardIndex::First(std::optional<int64_t> sequence,
                                                 const std::string& model) const {
  const std::set<Ref>* set = &available_;
  if (!model.empty()) {
    auto it = available_by_model_.find(model);
    if (it == available_by_model_.end()) return std::nullopt;
    set = &it->second;
  }
  auto it = sequence ? set->lower_bound({*sequence, 0}) : set->begin();
  if (it == set->end() || (sequence && it->sequence != *sequence)) return std::nullopt;
  return *it;
}

}  // namespace moend::registry

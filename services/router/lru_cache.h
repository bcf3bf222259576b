// A small least-recently-used map with a bound on entries. Not thread-safe;
// the router guards it with its own mutex.
#ifndef MOEND_SERVICES_ROUTER_LRU_CACHE_H_
#define MOEND_SERVICES_ROUTER_LRU_CACHE_H_

#include <cstddef>
#include <list>
#include <utility>

#include "absl/container/flat_hash_map.h"

namespace moend::router {

template <typename K, typename V>
class LruCache {
 public:
  // capacity >= 1 entries.
  explicit LruCache(size_t capacity) : capacity_(capacity < 1 ? 1 : capacity) {}

  // The value for `key` (now the most recent entry), or nullptr. The pointer
  // is valid until the next Put.
  const V* Get(const K& key) {
    auto it = index_.find(key);
    if (it == index_.end()) return nullptr;
    order_.splice(order_.begin(), order_, it->second);
    return &it->second->second;
  }

  // Inserts or replaces `key`; evicts the least recently used entry when over
  // capacity.
  void Put(const K& key, V value) {
    auto it = index_.find(key);
    if (it != index_.end()) {
      it->second->second = std::move(value);
      order_.splice(order_.begin(), order_, it->second);
      return;
    }
    order_.emplace_front(key, std::move(value));
    index_.emplace(key, order_.begin());
    if (order_.size() > capacity_) {
      index_.erase(order_.back().first);
      order_.pop_back();
    }
  }

  size_t size() const { return order_.size(); }
  size_t capacity() const { return capacity_; }

 private:
  using Entry = std::pair<K, V>;
  const size_t capacity_;
  std::list<Entry> order_;  // most recent first
  absl::flat_hash_map<K, typename std::list<Entry>::iterator> index_;
};

}  // namespace moend::router

#endif  // MOEND_SERVICES_ROUTER_LRU_CACHE_H_

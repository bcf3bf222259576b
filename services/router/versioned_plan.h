// A plan as the router serves it: the solver's Plan (core/plan.h) plus where
// it came from. Shared by the router and the plan client; one instance is
// immutable once built and is passed around as shared_ptr<const ...>.
#ifndef MOEND_SERVICES_ROUTER_VERSIONED_PLAN_H_
#define MOEND_SERVICES_ROUTER_VERSIONED_PLAN_H_

#include <cstdint>

#include "absl/time/time.h"
#include "core/plan.h"

namespace moend::router {

struct VersionedPlan {
  // Monotonic per (model, budget, solver): the router uses the table version,
  // so equal tables give equal plans and a newer table a larger version.
  uint64_t version = 0;
  uint64_t table_version = 0;  // registry version of the table solved over
  int64_t num_kv_heads = 0;    // the table's KV shape, for applying the plan
  int64_t head_dim = 0;
  absl::Time created = absl::UnixEpoch();  // when the router solved it
  Plan plan;
};

}  // namespace moend::router

#endif  // MOEND_SERVICES_ROUTER_VERSIONED_PLAN_H_

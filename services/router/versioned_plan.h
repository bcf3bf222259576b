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
  // The registry version of the table solved over. It is also the plan's
  // version: plans of one (model, budget, solver) are a pure function of the
  // table, so equal tables give equal plans and a newer table a newer plan.
  // (The wire Plan carries it twice, as version and table_version.)
  uint64_t table_version = 0;
  int64_t num_kv_heads = 0;    // the table's KV shape, for applying the plan
  int64_t head_dim = 0;
  absl::Time created = absl::UnixEpoch();  // when the router solved it
  Plan plan;
};

}  // namespace moend::router

#endif  // MOEND_SERVICES_ROUTER_VERSIONED_PLAN_H_

// Conversions between the router's domain types (VersionedPlan, Budget) and
// moend.v1 messages. Used by the router's gRPC adapter, the plan client and
// the benchmarks. FromProto functions check structure (a budget kind is set,
// layers are consistent) and validate the result, so a client never holds a
// plan that Plan::Validate rejects.
#ifndef MOEND_SERVICES_ROUTER_PLAN_CONVERT_H_
#define MOEND_SERVICES_ROUTER_PLAN_CONVERT_H_

#include "absl/status/statusor.h"
#include "core/plan.h"
#include "moend/v1/common.pb.h"
#include "moend/v1/plan.pb.h"
#include "services/router/versioned_plan.h"

namespace moend::router {

v1::Plan ToProto(const VersionedPlan& p);
// InvalidArgument when the message is not a valid plan (Plan::Validate),
// layer indices are not 0, 1, 2, ... in order, or a layer has per-head
// tuples (LayerPlan.heads) but not one per KV head (num_kv_heads). A layer
// with heads gets PlanLayer::heads and a default (unused) tuple.
absl::StatusOr<VersionedPlan> PlanFromProto(const v1::Plan& p);

v1::Budget ToProto(const Budget& b);
// InvalidArgument when neither ratio nor bytes is set, or the budget fails
// Budget::Validate (the message names the field and what is allowed).
absl::StatusOr<Budget> BudgetFromProto(const v1::Budget& p);

}  // namespace moend::router

#endif  // MOEND_SERVICES_ROUTER_PLAN_CONVERT_H_

// The inference-node side of the router: follow the plan of a
// (model, budget, solver) and hold the current one.
//
//   MOEND_ASSIGN_OR_RETURN(auto client, PlanClient::Connect({.target = "router:7002"}));
//   MOEND_ASSIGN_OR_RETURN(auto watch, client->Watch("tinycode", Budget::Ratio(8), "greedy"));
//   watch->WaitForNewer(0, absl::Seconds(30));  // optional: block until a first plan
//   for (each request) {
//     PlanPtr plan = watch->Current();  // one plan for the whole request
//     ... apply plan->plan.RuntimeTuples() (one tuple per layer, or per
//         (layer, KV head) when the router solved per head) ...
//   }
//
// A watch keeps one WatchPlans stream open on a background thread. Each plan
// received is validated and, if its version is newer than the held one,
// swapped in atomically: a request that took Current() keeps its plan until it
// lets go of it, the next request sees the new one. When the stream ends (the
// router died, restarted, or shut down) the watch reconnects with exponential
// backoff and keeps serving the plan it holds meanwhile.
#ifndef MOEND_CLIENTS_PLAN_CLIENT_PLAN_CLIENT_H_
#define MOEND_CLIENTS_PLAN_CLIENT_PLAN_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/plan.h"
#include "services/common/security.h"
#include "services/router/versioned_plan.h"

namespace moend::plan_client {

namespace internal {
struct PlanClientState;
}  // namespace internal

using PlanPtr = std::shared_ptr<const router::VersionedPlan>;

struct PlanClientOptions {
  // gRPC target of a router (or a load balancer in front of routers), e.g.
  // "127.0.0.1:7002". Required.
  std::string target{};
  // Wait before reconnecting after a stream ends: starts at backoff_initial,
  // doubles after each attempt that got no plan, at most backoff_max; reset
  // when a plan arrives. Also used as the channel's own reconnect backoff.
  // Defaults 100 ms and 5 s.
  absl::Duration backoff_initial = absl::Milliseconds(100);
  absl::Duration backoff_max = absl::Seconds(5);
  // HTTP/2 keepalive ping interval, so a silently vanished router is noticed.
  // Default 30 s.
  absl::Duration keepalive = absl::Seconds(30);
  // TLS and the bearer token for the router. Default: plaintext, no token.
  rpc::ClientSecurity security{};
};

// One followed (model, budget, solver). Thread-safe. Destroying it closes the
// stream and joins its thread.
class PlanWatch {
 public:
  virtual ~PlanWatch() = default;

  // The held plan; nullptr until the first one arrives. Lock-free for the
  // caller's purposes (an atomic shared_ptr load).
  virtual PlanPtr Current() const = 0;

  // Blocks until a plan with version > `after_version` is held (and the
  // watch's callback has run for it) and returns it; DeadlineExceeded (with
  // the last connection error) after `timeout`.
  virtual absl::StatusOr<PlanPtr> WaitForNewer(uint64_t after_version,
                                               absl::Duration timeout) const = 0;

  // Why the last stream ended or failed to start (OK before any failure):
  // e.g. Unavailable while the router is down, NotFound for an unknown model.
  virtual absl::Status last_error() const = 0;

  // Streams that delivered at least one plan so far (1 + reconnects).
  virtual int64_t streams() const = 0;
};

class PlanClient {
 public:
  // InvalidArgument for an empty target or bad backoff; the error of
  // rpc::CreateChannel for bad security options. Does not wait for the
  // router: a node may start first and pick up its plan when the router comes.
  static absl::StatusOr<std::unique_ptr<PlanClient>> Connect(const PlanClientOptions& options);
  ~PlanClient();

  // Called on the watch's thread after each plan is swapped in.
  using PlanCallback = std::function<void(const PlanPtr&)>;

  // Starts following (model, budget, solver; "" = exact). InvalidArgument for
  // an empty model, an invalid budget or an unknown solver (checked here, the
  // same way the router does). Errors from the router (unknown model,
  // infeasible budget) do not fail Watch: they show in last_error() while the
  // watch retries with backoff.
  absl::StatusOr<std::unique_ptr<PlanWatch>> Watch(const std::string& model, const Budget& budget,
                                                   const std::string& solver = "greedy",
                                                   PlanCallback on_plan = nullptr);

 private:
  explicit PlanClient(std::shared_ptr<internal::PlanClientState> state);
  std::shared_ptr<internal::PlanClientState> state_;
};

}  // namespace moend::plan_client

#endif  // MOEND_CLIENTS_PLAN_CLIENT_PLAN_CLIENT_H_

#include "services/router/router_service.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/server_builder.h"
#include "core/status_macros.h"
#include "services/common/grpc_status.h"
#include "services/common/server_setup.h"
#include "services/router/plan_convert.h"

namespace moend::router {

using rpc::ToGrpcStatus;

namespace {
constexpr char kServiceName[] = "moend.v1.Router";
}  // namespace

// One WatchPlans stream. At most one write is in flight; a plan that arrives
// meanwhile waits in `pending_`, replacing any older one there. Deletes
// itself in OnDone, after unsubscribing.
class RouterService::WatchReactor final : public grpc::ServerWriteReactor<v1::Plan> {
 public:
  explicit WatchReactor(RouterService* service) : service_(service) {}

  // Subscribes on the router's solve threads unless the plan is cached; the
  // first plan is written from there. Until Started runs, OnDone leaves the
  // deletion to it.
  void Start(const v1::WatchPlansRequest& request) {
    absl::StatusOr<Budget> budget = BudgetFromProto(request.budget());
    if (!budget.ok()) {
      FinishOnce(ToGrpcStatus(budget.status()));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      starting_ = true;
    }
    service_->router_->WatchPlansAsync(
        {request.model(), *budget, request.solver(), request.units()},
        [this](PlanPtr plan) { Offer(std::move(plan)); },
        [this](absl::StatusOr<std::unique_ptr<PlanSubscription>> subscription) {
          Started(std::move(subscription));
        });
  }

  void Offer(PlanPtr plan) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return;
    if (writing_) {
      pending_ = std::move(plan);
      return;
    }
    WriteLocked(*plan);
  }

  void FinishOnce(grpc::Status status) {
    absl::MutexLock lock(&mu_);
    if (finishing_) return;
    finishing_ = true;
    pending_.reset();
    if (writing_) {
      finish_status_ = std::move(status);  // sent once the write completes
    } else {
      Finish(std::move(status));
    }
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (finishing_) {
      if (finish_status_) Finish(*std::move(finish_status_));
      finish_status_.reset();
      return;
    }
    if (!ok) {  // the client went away; OnCancel may follow
      finishing_ = true;
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke"));
      return;
    }
    if (pending_) {
      PlanPtr next = std::move(pending_);
      pending_.reset();
      WriteLocked(*next);
    }
  }

  void OnCancel() override { FinishOnce(grpc::Status::CANCELLED); }

  void OnDone() override {
    std::unique_ptr<PlanSubscription> subscription;
    bool starting;
    {
      absl::MutexLock lock(&mu_);
      subscription = std::move(subscription_);
      done_ = true;
      starting = starting_;
    }
    subscription.reset();  // no Offer runs after this
    service_->Remove(this);
    if (!starting) delete this;  // else Started deletes it
  }

 private:
  void Started(absl::StatusOr<std::unique_ptr<PlanSubscription>> subscription) {
    if (!subscription.ok()) FinishOnce(ToGrpcStatus(subscription.status()));
    std::unique_ptr<PlanSubscription> unwanted;
    bool done;
    {
      absl::MutexLock lock(&mu_);
      starting_ = false;
      done = done_;
      if (subscription.ok()) (done ? unwanted : subscription_) = *std::move(subscription);
    }
    unwanted.reset();  // the stream ended meanwhile: unsubscribe
    if (done) delete this;
  }

  void WriteLocked(const VersionedPlan& plan) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    writing_ = true;
    message_ = ToProto(plan);
    StartWrite(&message_);
  }

  RouterService* const service_;
  absl::Mutex mu_;
  std::unique_ptr<PlanSubscription> subscription_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool starting_ ABSL_GUARDED_BY(mu_) = false;  // WatchPlansAsync has not called back
  bool done_ ABSL_GUARDED_BY(mu_) = false;      // OnDone ran
  std::optional<grpc::Status> finish_status_ ABSL_GUARDED_BY(mu_);
  PlanPtr pending_ ABSL_GUARDED_BY(mu_);
  v1::Plan message_ ABSL_GUARDED_BY(mu_);  // the write in flight
};

grpc::ServerUnaryReactor* RouterService::SolvePlan(grpc::CallbackServerContext* context,
                                                   const v1::SolvePlanRequest* request,
                                                   v1::Plan* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (grpc::Status auth = auth_.Read(*context); !auth.ok()) {
    reactor->Finish(auth);
    return reactor;
  }
  absl::StatusOr<Budget> budget = BudgetFromProto(request->budget());
  if (!budget.ok()) {
    reactor->Finish(ToGrpcStatus(budget.status()));
    return reactor;
  }
  // Answered here from the cache, or later by a solve thread.
  router_->SolvePlanAsync(
      {request->model(), *budget, request->solver(), request->table_version(), request->units()},
      [reactor, response](absl::StatusOr<PlanPtr> plan) {
        if (!plan.ok()) {
          reactor->Finish(ToGrpcStatus(plan.status()));
          return;
        }
        *response = ToProto(**plan);
        reactor->Finish(grpc::Status::OK);
      });
  return reactor;
}

grpc::ServerWriteReactor<v1::Plan>* RouterService::WatchPlans(
    grpc::CallbackServerContext* context, const v1::WatchPlansRequest* request) {
  auto* reactor = new WatchReactor(this);
  {
    absl::MutexLock lock(&mu_);
    const bool full = static_cast<int64_t>(watches_.size()) >= max_watch_streams_;
    watches_.insert(reactor);
    if (stopping_) {
      reactor->FinishOnce(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                       "the router is shutting down; connect to another router"));
      return reactor;
    }
    if (full) {
      reactor->FinishOnce(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("this router already serves ", max_watch_streams_,
                       " plan streams (--max-watch-streams); retry later or use another router")));
      return reactor;
    }
  }
  if (grpc::Status auth = auth_.Read(*context); !auth.ok()) {
    reactor->FinishOnce(auth);
    return reactor;
  }
  reactor->Start(*request);
  return reactor;
}

void RouterService::Remove(WatchReactor* reactor) {
  absl::MutexLock lock(&mu_);
  watches_.erase(reactor);
}

void RouterService::Stop() {
  // OnDone (which takes mu_ to Remove) never runs inline from Finish, so
  // finishing under mu_ is safe and keeps every reactor alive meanwhile.
  absl::MutexLock lock(&mu_);
  stopping_ = true;
  for (WatchReactor* reactor : watches_) {
    reactor->FinishOnce(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                     "the router is shutting down; connect to another router"));
  }
}

absl::StatusOr<std::unique_ptr<RouterServer>> RouterServer::Start(
    Router* router, const RouterServerOptions& options) {
  MOEND_ASSIGN_OR_RETURN(rpc::ServerSecuritySetup security,
                         rpc::LoadServerSecurity(options.security));
  std::unique_ptr<RouterServer> server(new RouterServer);
  server->service_ = std::make_unique<RouterService>(router, security.authorizer,
                                                     options.max_watch_streams);
  MOEND_ASSIGN_OR_RETURN(rpc::StartedServer started,
                         rpc::StartServer({.listen_address = options.listen_address,
                                           .credentials = security.credentials,
                                           .tls = security.tls,
                                           .max_message_bytes = options.max_message_bytes,
                                           .service = server->service_.get(),
                                           .service_name = kServiceName}));
  server->server_ = std::move(started.server);
  server->port_ = started.port;
  server->address_ = started.address;
  return server;
}

bool RouterServer::Serving() const {
  // A shut-down grpc::Server must not be called (its in-process channel
  // crashes); callers stop asking before Shutdown (MetricsServer::SetHealthCheck).
  return !shut_down_ && rpc::ServingInProcess(server_.get(), kServiceName);
}

RouterServer::~RouterServer() { Shutdown(); }

void RouterServer::Shutdown(absl::Duration grace) {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  rpc::SetServing(server_.get(), {kServiceName}, false);
  service_->Stop();
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  server_->Wait();
}

}  // namespace moend::router

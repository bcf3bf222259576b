#include "clients/plan_client/plan_client.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/solver.h"
#include "core/status_macros.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/support/channel_arguments.h"
#include "moend/v1/router.grpc.pb.h"
#include "services/common/grpc_status.h"
#include "services/router/plan_convert.h"

namespace moend::plan_client {

namespace internal {
struct PlanClientState {
  PlanClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Router::Stub> stub;
};
}  // namespace internal

namespace {

class PlanWatchImpl final : public PlanWatch {
 public:
  PlanWatchImpl(std::shared_ptr<internal::PlanClientState> client, v1::WatchPlansRequest request,
                PlanClient::PlanCallback on_plan)
      : client_(std::move(client)), request_(std::move(request)), on_plan_(std::move(on_plan)) {
    thread_ = std::thread([this] { Run(); });
  }

  ~PlanWatchImpl() override {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      if (context_) context_->TryCancel();
    }
    thread_.join();
  }

  PlanPtr Current() const override { return current_.load(); }

  absl::StatusOr<PlanPtr> WaitForNewer(uint64_t after_version,
                                       absl::Duration timeout) const override {
    absl::MutexLock lock(&mu_);
    auto newer = [&] { return delivered_version_ > after_version; };
    mu_.AwaitWithTimeout(absl::Condition(&newer), timeout);
    if (!newer()) {
      return absl::DeadlineExceededError(
          absl::StrCat("no plan newer than version ", after_version, " for model '",
                       request_.model(), "' within ", absl::FormatDuration(timeout),
                       last_error_.ok() ? "" : absl::StrCat("; last error: ",
                                                            last_error_.ToString())));
    }
    return current_.load();
  }

  absl::Status last_error() const override {
    absl::MutexLock lock(&mu_);
    return last_error_;
  }

  int64_t streams() const override {
    absl::MutexLock lock(&mu_);
    return streams_;
  }

 private:
  // Reads one stream to its end; true if it delivered a plan.
  bool ReadStream() {
    auto context = std::make_shared<grpc::ClientContext>();
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return false;
      context_ = context;
    }
    std::unique_ptr<grpc::ClientReader<v1::Plan>> reader =
        client_->stub->WatchPlans(context.get(), request_);
    bool delivered = false;
    absl::Status error;
    v1::Plan message;
    while (reader->Read(&message)) {
      absl::StatusOr<router::VersionedPlan> plan = router::PlanFromProto(message);
      if (plan.ok() && plan->plan.model != request_.model()) {
        plan = absl::InternalError(absl::StrCat("the router sent a plan for model '",
                                                plan->plan.model, "', not '", request_.model(),
                                                "'"));
      }
      if (!plan.ok()) {
        error = absl::Status(plan.status().code(),
                             absl::StrCat("bad plan from the router: ", plan.status().message()));
        context->TryCancel();
        break;
      }
      if (!delivered) {
        delivered = true;
        absl::MutexLock lock(&mu_);
        ++streams_;
      }
      Swap(std::make_shared<const router::VersionedPlan>(*std::move(plan)));
    }
    absl::Status finish = rpc::FromGrpcStatus(reader->Finish());
    if (error.ok()) {
      error = finish.ok() ? absl::UnavailableError("the router ended the plan stream") : finish;
    }
    absl::MutexLock lock(&mu_);
    context_.reset();
    if (!stopping_) last_error_ = error;
    return delivered;
  }

  // Holds `plan` if it is newer than the held one (a router that has not yet
  // seen the newest table may send an older plan after a reconnect).
  // Waiters wake only after on_plan_ has run, so a caller that waited for a
  // version sees the callback's effects.
  void Swap(PlanPtr plan) {
    {
      absl::MutexLock lock(&mu_);
      if (plan->table_version <= version_) return;
      current_.store(plan);
      version_ = plan->table_version;
    }
    if (on_plan_) on_plan_(plan);
    absl::MutexLock lock(&mu_);
    delivered_version_ = std::max(delivered_version_, plan->table_version);
  }

  void Run() {
    const PlanClientOptions& o = client_->options;
    absl::Duration backoff = o.backoff_initial;
    while (true) {
      if (ReadStream()) backoff = o.backoff_initial;
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), backoff);
      if (stopping_) return;
      backoff = std::min(backoff * 2, o.backoff_max);
    }
  }

  const std::shared_ptr<internal::PlanClientState> client_;
  const v1::WatchPlansRequest request_;
  const PlanClient::PlanCallback on_plan_;
  std::atomic<PlanPtr> current_;

  mutable absl::Mutex mu_;
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;            // of current_
  uint64_t delivered_version_ ABSL_GUARDED_BY(mu_) = 0;  // on_plan_ has run
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<grpc::ClientContext> context_ ABSL_GUARDED_BY(mu_);
  absl::Status last_error_ ABSL_GUARDED_BY(mu_);
  int64_t streams_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PlanClient>> PlanClient::Connect(
    const PlanClientOptions& options) {
  if (options.target.empty()) {
    return absl::InvalidArgumentError("PlanClientOptions.target is required: a router's host:port");
  }
  if (options.backoff_initial <= absl::ZeroDuration() ||
      options.backoff_max < options.backoff_initial || options.keepalive <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "backoff_initial and keepalive must be > 0 and backoff_max >= backoff_initial");
  }
  auto impl = std::make_shared<internal::PlanClientState>();
  impl->options = options;
  grpc::ChannelArguments args;
  const int initial_ms = static_cast<int>(absl::ToInt64Milliseconds(options.backoff_initial));
  const int max_ms = static_cast<int>(absl::ToInt64Milliseconds(options.backoff_max));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::max(initial_ms, 1));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, std::max(max_ms, 1));
  // After the router goes away the channel re-resolves its target; the
  // resolver's default cooldown (30 s) would otherwise delay reconnects.
  args.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, std::max(initial_ms, 1));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS,
              static_cast<int>(absl::ToInt64Milliseconds(options.keepalive)));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  MOEND_ASSIGN_OR_RETURN(impl->channel, rpc::CreateChannel(options.target, options.security, args));
  impl->stub = v1::Router::NewStub(impl->channel);
  return std::unique_ptr<PlanClient>(new PlanClient(std::move(impl)));
}

PlanClient::PlanClient(std::shared_ptr<internal::PlanClientState> state)
    : state_(std::move(state)) {}
PlanClient::~PlanClient() = default;

absl::StatusOr<std::unique_ptr<PlanWatch>> PlanClient::Watch(const std::string& model,
                                                             const Budget& budget,
                                                             const std::string& solver,
                                                             PlanCallback on_plan) {
  if (model.empty()) {
    return absl::InvalidArgumentError("model is required: give the name of a registered model");
  }
  MOEND_RETURN_IF_ERROR(budget.Validate());
  MOEND_RETURN_IF_ERROR(ParseSolverKind(solver.empty() ? "exact" : solver).status());
  v1::WatchPlansRequest request;
  request.set_model(model);
  *request.mutable_budget() = router::ToProto(budget);
  request.set_solver(solver);
  return std::unique_ptr<PlanWatch>(
      std::make_unique<PlanWatchImpl>(state_, std::move(request), std::move(on_plan)));
}

}  // namespace moend::plan_client

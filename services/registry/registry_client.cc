#include "services/registry/registry_client.h"

#include <map>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/file_util.h"
#include "core/status_macros.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "moend/v1/registry.grpc.pb.h"
#include "services/common/grpc_status.h"
#include "services/registry/proto_convert.h"

namespace moend::registry {
namespace {
absl::Status FromGrpc(const grpc::Status& s) { return rpc::FromGrpcStatus(s); }
}  // namespace

namespace {

// The change feed of one model: a WatchModelVersions stream that its own
// thread keeps open (and opens again after a failure or at the end of its
// lifetime, from the newest version seen), and the events it delivered.
class VersionWatch {
 public:
  VersionWatch(const RegistryClientOptions& options, v1::Registry::Stub* stub, std::string model)
      : options_(options), stub_(stub), model_(std::move(model)) {
    thread_ = std::thread([this] { Run(); });
  }
  ~VersionWatch() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      if (context_ != nullptr) context_->TryCancel();
    }
    thread_.join();
  }

  absl::StatusOr<VersionEvent> Wait(uint64_t after_version, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    absl::MutexLock lock(&mu_);
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !error_.ok() || events_.upper_bound(after_version) != events_.end();
    };
    mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
    if (auto it = events_.upper_bound(after_version); it != events_.end()) return it->second;
    if (!error_.ok()) return error_;
    return absl::DeadlineExceededError(absl::StrCat("model '", model_, "' got no version after ",
                                                    after_version, " within ",
                                                    absl::FormatDuration(timeout)));
  }

 private:
  static constexpr size_t kMaxEvents = 256;

  void Run() {
    absl::Duration backoff = options_.watch_backoff_initial;
    for (;;) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + options_.watch_stream_lifetime));
      v1::WatchModelVersionsRequest req;
      req.set_model(model_);
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return;
        context_ = &context;
        req.set_after_version(newest_);
        error_ = absl::OkStatus();  // waiters wait for this attempt
      }
      auto reader = stub_->WatchModelVersions(&context, req);
      v1::ModelVersionEvent msg;
      while (reader->Read(&msg)) {
        absl::MutexLock lock(&mu_);
        backoff = options_.watch_backoff_initial;
        newest_ = std::max(newest_, msg.version());
        events_[msg.version()] = FromProto(msg);
        if (events_.size() > kMaxEvents) events_.erase(events_.begin());
      }
      absl::Status status = rpc::FromGrpcStatus(reader->Finish());
      absl::MutexLock lock(&mu_);
      context_ = nullptr;
      if (stopping_) return;
      if (absl::IsDeadlineExceeded(status)) continue;  // the lifetime ended: reopen now
      error_ = status.ok() ? absl::UnavailableError(absl::StrCat(
                                 "the registry ended the version watch of model '", model_, "'"))
                           : status;
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stop), backoff)) return;
      backoff = std::min(backoff * 2, options_.watch_backoff_max);
    }
  }

  const RegistryClientOptions& options_;
  v1::Registry::Stub* const stub_;
  const std::string model_;
  std::thread thread_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;  // the open stream's
  // The newest version seen; the first stream starts at 0, so every version
  // of the model is known, and a reopened one resumes here.
  uint64_t newest_ ABSL_GUARDED_BY(mu_) = 0;
  // OK while the stream is open or being opened; else why the last one failed.
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, VersionEvent> events_ ABSL_GUARDED_BY(mu_);  // the newest kMaxEvents
};

}  // namespace

struct RegistryClient::Impl {
  RegistryClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Registry::Stub> stub;
  absl::Mutex watches_mu;
  // Declared last: the watches (their threads use the stub) go first.
  std::map<std::string, std::unique_ptr<VersionWatch>> watches ABSL_GUARDED_BY(watches_mu);

  std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    return ctx;
  }
  std::unique_ptr<grpc::ClientContext> Context() const { return Context(options.rpc_timeout); }

  VersionWatch& Watch(const std::string& model) {
    absl::MutexLock lock(&watches_mu);
    std::unique_ptr<VersionWatch>& watch = watches[model];
    if (watch == nullptr) {
      watch = std::make_unique<VersionWatch>(options, stub.get(), model);
    }
    return *watch;
  }
};

RegistryClient::RegistryClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RegistryClient::~RegistryClient() = default;

absl::StatusOr<std::unique_ptr<RegistryClient>> RegistryClient::Connect(
    const RegistryClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("registry target is empty");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  MOEND_ASSIGN_OR_RETURN(impl->channel, rpc::CreateChannel(options.target, options.security, args));
  if (options.connect_timeout > absl::ZeroDuration() &&
      !impl->channel->WaitForConnected(absl::ToChronoTime(absl::Now() + options.connect_timeout))) {
    return absl::UnavailableError(absl::StrCat("cannot reach the registry at '", options.target,
                                               "' within ",
                                               absl::FormatDuration(options.connect_timeout)));
  }
  impl->stub = v1::Registry::NewStub(impl->channel);
  return std::unique_ptr<RegistryClient>(new RegistryClient(std::move(impl)));
}

absl::StatusOr<ModelInfo> RegistryClient::RegisterModel(const std::string& name,
                                                        const std::string& config_json) {
  v1::RegisterModelRequest req;
  req.set_name(name);
  req.set_config_json(config_json);
  v1::Model resp;
  MOEND_RETURN_IF_ERROR(FromGrpc(impl_->stub->RegisterModel(impl_->Context().get(), req, &resp)));
  return FromProto(resp);
}

absl::StatusOr<ModelInfo> RegistryClient::RegisterModelFromFile(const std::string& name,
                                                                const std::string& config_path) {
  MOEND_ASSIGN_OR_RETURN(std::string json, ReadFile(config_path));
  return RegisterModel(name, json);
}

absl::StatusOr<ModelInfo> RegistryClient::GetModel(const std::string& name) {
  v1::GetModelRequest req;
  req.set_name(name);
  v1::Model resp;
  MOEND_RETURN_IF_ERROR(FromGrpc(impl_->stub->GetModel(impl_->Context().get(), req, &resp)));
  return FromProto(resp);
}

absl::StatusOr<std::vector<ModelInfo>> RegistryClient::ListModels() {
  v1::ListModelsResponse resp;
  MOEND_RETURN_IF_ERROR(
      FromGrpc(impl_->stub->ListModels(impl_->Context().get(), v1::ListModelsRequest(), &resp)));
  std::vector<ModelInfo> out;
  for (const v1::Model& m : resp.models()) out.push_back(FromProto(m));
  return out;
}

absl::StatusOr<Job> RegistryClient::SubmitJob(const JobSpec& spec) {
  v1::SubmitJobRequest req;
  *req.mutable_spec() = ToProto(spec);
  v1::CalibrationJob resp;
  MOEND_RETURN_IF_ERROR(FromGrpc(impl_->stub->SubmitJob(impl_->Context().get(), req, &resp)));
  return FromProto(resp);
}

absl::StatusOr<Job> RegistryClient::GetJob(const std::string& job_id, bool include_shards) {
  v1::GetJobRequest req;
  req.set_job_id(job_id);
  req.set_include_shards(include_shards);
  v1::CalibrationJob resp;
  MOEND_RETURN_IF_ERROR(FromGrpc(impl_->stub->GetJob(impl_->Context().get(), req, &resp)));
  return FromProto(resp);
}

absl::StatusOr<std::vector<Job>> RegistryClient::ListJobs(const std::string& model) {
  v1::ListJobsRequest req;
  req.set_model(model);
  v1::ListJobsResponse resp;
  MOEND_RETURN_IF_ERROR(FromGrpc(impl_->stub->ListJobs(impl_->Context().get(), req, &resp)));
  std::vector<Job> out;
  for (const v1::CalibrationJob& j : resp.jobs()) out.push_back(FromProto(j));
  return out;
}

absl::StatusOr<Job> RegistryClient::WaitForJob(const std::string& job_id, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    v1::GetJobRequest req;
    req.set_job_id(job_id);
    v1::CalibrationJob resp;
    MOEND_RETURN_IF_ERROR(FromGrpc(impl_->stub->GetJob(impl_->Context().get(), req, &resp)));
    if (resp.state() == v1::JOB_STATE_DONE) return FromProto(resp);
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("job '", job_id, "' not done after ",
                                                      absl::FormatDuration(timeout), ": ",
                                                      resp.shards_done(), " of ",
                                                      resp.shards_total(), " shards in"));
    }
    absl::SleepFor(std::min(impl_->options.poll_interval, deadline - absl::Now()));
  }
}

absl::StatusOr<std::optional<Lease>> RegistryClient::LeaseShard(const std::string& worker_id,
                                                                const std::string& job_id,
                                                                const std::string& model) {
  v1::LeaseShardRequest req;
  req.set_worker_id(worker_id);
  req.set_job_id(job_id);
  req.set_model(model);
  v1::LeaseShardResponse resp;
  MOEND_RETURN_IF_ERROR(FromGrpc(impl_->stub->LeaseShard(impl_->Context().get(), req, &resp)));
  if (!resp.granted()) return std::optional<Lease>();
  return std::optional<Lease>(FromProto(resp.lease()));
}

absl::StatusOr<absl::Time> RegistryClient::Heartbeat(const std::string& lease_id,
                                                     const std::string& worker_id) {
  v1::HeartbeatRequest req;
  req.set_lease_id(lease_id);
  req.set_worker_id(worker_id);
  v1::HeartbeatResponse resp;
  MOEND_RETURN_IF_ERROR(FromGrpc(impl_->stub->Heartbeat(impl_->Context().get(), req, &resp)));
  return absl::FromUnixMicros(resp.expiry_unix_micros());
}

absl::StatusOr<ReportResult> RegistryClient::ReportShard(const ShardReport& report) {
  v1::ReportShardResponse resp;
  MOEND_RETURN_IF_ERROR(
      FromGrpc(impl_->stub->ReportShard(impl_->Context().get(), ToProto(report), &resp)));
  return FromProto(resp);
}

absl::StatusOr<ReportResult> RegistryClient::ReportLease(
    const Lease& lease, std::vector<std::vector<double>> s,
    std::vector<std::vector<std::vector<double>>> s_head) {
  return ReportShard(ReportOf(lease, std::move(s), std::move(s_head)));
}

absl::StatusOr<uint64_t> RegistryClient::PublishTable(const SensitivityTable& table) {
  v1::PublishTableRequest req;
  *req.mutable_table() = ToProto(table);
  v1::PublishTableResponse resp;
  MOEND_RETURN_IF_ERROR(FromGrpc(impl_->stub->PublishTable(impl_->Context().get(), req, &resp)));
  return resp.version();
}

absl::StatusOr<VersionedTable> RegistryClient::GetTable(const std::string& model,
                                                        uint64_t version) {
  v1::GetTableRequest req;
  req.set_model(model);
  req.set_version(version);
  v1::GetTableResponse resp;
  MOEND_RETURN_IF_ERROR(FromGrpc(impl_->stub->GetTable(impl_->Context().get(), req, &resp)));
  return FromProto(resp);
}

absl::StatusOr<VersionEvent> RegistryClient::WaitForVersion(const std::string& model,
                                                            uint64_t after_version,
                                                            absl::Duration timeout) {
  return impl_->Watch(model).Wait(after_version, timeout);
}

}  // namespace moend::registry

#include "services/registry/registry_service.h"

#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "core/status_macros.h"
#include "services/common/grpc_status.h"
#include "services/common/server_setup.h"
#include "services/registry/proto_convert.h"

namespace moend::registry {

namespace {
using rpc::ToGrpcStatus;
constexpr char kServiceName[] = "moend.v1.Registry";
}  // namespace

RegistryService::RegistryService(Registry* registry, absl::Duration watch_poll,
                                 rpc::TokenAuthorizer auth, int64_t max_watch_streams,
                                 rpc::WorkerIdentity workers)
    : registry_(registry),
      watch_poll_(watch_poll),
      auth_(std::move(auth)),
      workers_(workers),
      max_watch_streams_(max_watch_streams) {}

grpc::Status RegistryService::AuthorizeWorker(const grpc::ServerContext& context,
                                              const std::string& worker_id) const {
  if (grpc::Status auth = auth_.Mutating(context); !auth.ok()) return auth;
  return workers_.Check(context, worker_id);
}

grpc::Status RegistryService::RegisterModel(grpc::ServerContext* context,
                                            const v1::RegisterModelRequest* req, v1::Model* resp) {
  if (grpc::Status auth = auth_.Mutating(*context); !auth.ok()) return auth;
  auto m = registry_->RegisterModel(req->name(), req->config_json());
  if (!m.ok()) return ToGrpcStatus(m.status());
  *resp = ToProto(*m);
  return grpc::Status::OK;
}

grpc::Status RegistryService::GetModel(grpc::ServerContext* context, const v1::GetModelRequest* req,
                                       v1::Model* resp) {
  if (grpc::Status auth = auth_.Read(*context); !auth.ok()) return auth;
  auto m = registry_->GetModel(req->name());
  if (!m.ok()) return ToGrpcStatus(m.status());
  *resp = ToProto(*m);
  return grpc::Status::OK;
}

grpc::Status RegistryService::ListModels(grpc::ServerContext* context, const v1::ListModelsRequest*,
                                         v1::ListModelsResponse* resp) {
  if (grpc::Status auth = auth_.Read(*context); !auth.ok()) return auth;
  for (const ModelInfo& m : registry_->ListModels()) *resp->add_models() = ToProto(m);
  return grpc::Status::OK;
}

grpc::Status RegistryService::SubmitJob(grpc::ServerContext* context,
                                        const v1::SubmitJobRequest* req,
                                        v1::CalibrationJob* resp) {
  if (grpc::Status auth = auth_.Mutating(*context); !auth.ok()) return auth;
  auto job = registry_->SubmitJob(FromProto(req->spec()));
  if (!job.ok()) return ToGrpcStatus(job.status());
  *resp = ToProto(*job, /*include_shards=*/false);
  return grpc::Status::OK;
}

grpc::Status RegistryService::GetJob(grpc::ServerContext* context, const v1::GetJobRequest* req,
                                     v1::CalibrationJob* resp) {
  if (grpc::Status auth = auth_.Read(*context); !auth.ok()) return auth;
  auto job = registry_->GetJob(req->job_id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *resp = ToProto(*job, req->include_shards());
  return grpc::Status::OK;
}

grpc::Status RegistryService::ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* req,
                                       v1::ListJobsResponse* resp) {
  if (grpc::Status auth = auth_.Read(*context); !auth.ok()) return auth;
  for (const Job& j : registry_->ListJobs(req->model())) *resp->add_jobs() = ToProto(j, false);
  return grpc::Status::OK;
}

grpc::Status RegistryService::LeaseShard(grpc::ServerContext* context,
                                         const v1::LeaseShardRequest* req,
                                         v1::LeaseShardResponse* resp) {
  if (grpc::Status auth = AuthorizeWorker(*context, req->worker_id()); !auth.ok()) return auth;
  auto lease = registry_->LeaseShard(req->worker_id(), req->job_id(), req->model());
  if (!lease.ok()) return ToGrpcStatus(lease.status());
  resp->set_granted(lease->has_value());
  if (lease->has_value()) *resp->mutable_lease() = ToProto(**lease);
  return grpc::Status::OK;
}

grpc::Status RegistryService::Heartbeat(grpc::ServerContext* context,
                                        const v1::HeartbeatRequest* req,
                                        v1::HeartbeatResponse* resp) {
  if (grpc::Status auth = AuthorizeWorker(*context, req->worker_id()); !auth.ok()) return auth;
  auto expiry = registry_->Heartbeat(req->lease_id(), req->worker_id());
  if (!expiry.ok()) return ToGrpcStatus(expiry.status());
  resp->set_expiry_unix_micros(absl::ToUnixMicros(*expiry));
  return grpc::Status::OK;
}

grpc::Status RegistryService::ReportShard(grpc::ServerContext* context,
                                          const v1::ReportShardRequest* req,
                                          v1::ReportShardResponse* resp) {
  if (grpc::Status auth = AuthorizeWorker(*context, req->worker_id()); !auth.ok()) return auth;
  auto result = registry_->ReportShard(FromProto(*req));
  if (!result.ok()) return ToGrpcStatus(result.status());
  *resp = ToProto(*result);
  return grpc::Status::OK;
}

grpc::Status RegistryService::PublishTable(grpc::ServerContext* context,
                                           const v1::PublishTableRequest* req,
                                           v1::PublishTableResponse* resp) {
  if (grpc::Status auth = auth_.Mutating(*context); !auth.ok()) return auth;
  auto version = registry_->PublishTable(FromProto(req->table()));
  if (!version.ok()) return ToGrpcStatus(version.status());
  resp->set_version(*version);
  return grpc::Status::OK;
}

grpc::Status RegistryService::GetTable(grpc::ServerContext* context, const v1::GetTableRequest* req,
                                       v1::GetTableResponse* resp) {
  if (grpc::Status auth = auth_.Read(*context); !auth.ok()) return auth;
  auto table = registry_->GetTable(req->model(), req->version());
  if (!table.ok()) return ToGrpcStatus(table.status());
  *resp = ToProto(*table);
  return grpc::Status::OK;
}

grpc::Status RegistryService::WatchModelVersions(
    grpc::ServerContext* context, const v1::WatchModelVersionsRequest* req,
    grpc::ServerWriter<v1::ModelVersionEvent>* writer) {
  if (grpc::Status auth = auth_.Read(*context); !auth.ok()) return auth;
  if (!req->model().empty()) {
    if (auto m = registry_->GetModel(req->model()); !m.ok()) return ToGrpcStatus(m.status());
  }
  struct StreamSlot {
    std::atomic<int64_t>& open;
    ~StreamSlot() { --open; }
  } slot{watch_streams_};
  if (++watch_streams_ > max_watch_streams_) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("this registry already serves ", max_watch_streams_,
                                     " version watch streams (--max-watch-streams); retry later"));
  }
  std::map<std::string, uint64_t> seen;
  while (!context->IsCancelled()) {
    if (stopping_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "registry is shutting down");
    auto events = registry_->WaitForEvents(req->model(), req->after_version(), seen,
                                           absl::Now() + watch_poll_);
    if (!events.ok()) return ToGrpcStatus(events.status());
    for (const VersionEvent& e : *events) {
      v1::ModelVersionEvent msg = ToProto(e);
      if (req->include_tables()) {
        auto table = registry_->GetTable(e.model, e.version);
        if (!table.ok()) return ToGrpcStatus(table.status());
        *msg.mutable_table() = ToProto(table->table);
      }
      if (!writer->Write(msg)) return grpc::Status::OK;  // the client went away
      seen[e.model] = e.version;
    }
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled by the client");
}

absl::StatusOr<std::unique_ptr<RegistryServer>> RegistryServer::Start(
    Registry* registry, const RegistryServerOptions& options) {
  if (registry == nullptr) return absl::InvalidArgumentError("RegistryServer needs a registry");
  MOEND_ASSIGN_OR_RETURN(rpc::ServerSecuritySetup security,
                         rpc::LoadServerSecurity(options.security));
  std::unique_ptr<RegistryServer> server(new RegistryServer());
  server->service_ = std::make_unique<RegistryService>(
      registry, options.watch_poll, security.authorizer, options.max_watch_streams, security.workers);
  MOEND_ASSIGN_OR_RETURN(
      rpc::StartedServer started,
      rpc::StartServer({.listen_address = options.listen_address,
                        .credentials = security.credentials,
                        .tls = security.tls,
                        .max_message_bytes = options.max_message_bytes,
                        .service = server->service_.get(),
                        .service_name = kServiceName,
                        .configure = [&](grpc::ServerBuilder& builder) {
                          grpc::ResourceQuota quota("moend-registry");
                          quota.SetMaxThreads(options.max_threads);
                          builder.SetResourceQuota(quota);
                        }}));
  server->server_ = std::move(started.server);
  server->port_ = started.port;
  server->address_ = started.address;
  return server;
}

void RegistryServer::Shutdown(absl::Duration grace) {
  if (shut_down_ || server_ == nullptr) return;  // also: Start failed half way
  shut_down_ = true;
  rpc::SetServing(server_.get(), {kServiceName}, false);
  service_->Stop();
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  server_->Wait();
}

bool RegistryServer::Serving() const {
  // A shut-down grpc::Server must not be called (its in-process channel
  // crashes); callers stop asking before Shutdown (MetricsServer::SetHealthCheck).
  return !shut_down_ && rpc::ServingInProcess(server_.get(), kServiceName);
}

RegistryServer::~RegistryServer() { Shutdown(); }

}  // namespace moend::registry

#include "clients/node/node_service.h"

#include "services/common/grpc_status.h"
#include "services/router/plan_convert.h"

namespace moend::node {

grpc::Status NodeService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                   v1::GenerateResponse* response) {
  // Generate changes no state but spends the node's compute on the caller's
  // behalf, so it is guarded like a mutating call when a token is configured.
  if (grpc::Status auth = auth_.Mutating(*context); !auth.ok()) return auth;
  GenerateRequest r;
  r.prompt = request->prompt();
  r.max_new_tokens = request->max_new_tokens() == 0 ? 32 : request->max_new_tokens();
  r.full_cache = request->full_cache();
  if (request->has_plan()) {
    absl::StatusOr<router::VersionedPlan> plan = router::PlanFromProto(request->plan());
    if (!plan.ok()) return rpc::ToGrpcStatus(plan.status());
    std::vector<CompressionTuple> tuples;
    for (const PlanLayer& l : plan->plan.layers) tuples.push_back(l.tuple);
    r.plan = std::move(tuples);
  }
  absl::StatusOr<GenerateResult> result = node_->Generate(r);
  if (!result.ok()) return rpc::ToGrpcStatus(result.status());
  response->set_text(result->text);
  response->set_prompt_tokens(result->prompt_tokens);
  response->set_generated_tokens(result->generated_tokens);
  response->set_plan_version(result->plan_version);
  response->set_kv_cache_bytes(result->kv_cache_bytes);
  response->set_full_cache_bytes(result->full_cache_bytes);
  response->set_prefill_seconds(result->prefill_seconds);
  response->set_decode_seconds(result->decode_seconds);
  return grpc::Status::OK;
}

}  // namespace moend::node

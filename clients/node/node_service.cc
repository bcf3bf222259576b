#include "clients/node/node_service.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/time/clock.h"
#include "services/common/grpc_status.h"
#include "services/router/plan_convert.h"

namespace moend::node {
namespace {

absl::StatusOr<GenerateRequest> FromProto(grpc::ServerContext* context,
                                          const v1::GenerateRequest& p) {
  GenerateRequest r;
  r.prompt = p.prompt();
  r.prompt_token_ids.assign(p.prompt_token_ids().begin(), p.prompt_token_ids().end());
  r.max_new_tokens = p.max_new_tokens() == 0 ? 32 : p.max_new_tokens();
  r.full_cache = p.full_cache();
  if (p.has_plan()) {
    absl::StatusOr<router::VersionedPlan> plan = router::PlanFromProto(p.plan());
    if (!plan.ok()) return plan.status();
    r.plan = plan->plan.RuntimeTuples();  // per layer, or per (layer, KV head)
  }
  if (p.has_sampling()) {
    r.sampling.temperature = p.sampling().temperature();
    r.sampling.top_k = p.sampling().top_k();
    r.sampling.top_p = p.sampling().top_p() == 0 ? 1.0 : p.sampling().top_p();
    r.sampling.seed = p.sampling().seed();
  }
  for (const std::string& s : p.stop()) {
    std::vector<int32_t> ids;
    for (unsigned char ch : s) ids.push_back(ch);
    r.stop.push_back(std::move(ids));
  }
  for (const v1::TokenIds& s : p.stop_token_ids()) {
    r.stop.emplace_back(s.ids().begin(), s.ids().end());
  }
  const auto deadline = context->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    r.deadline = absl::FromChrono(deadline);
  }
  r.cancelled = [context] { return context->IsCancelled(); };
  return r;
}

void ToProto(const GenerateResult& result, v1::GenerateResponse* response) {
  response->set_text(result.text);
  response->set_prompt_tokens(result.prompt_tokens);
  response->set_generated_tokens(result.generated_tokens);
  response->set_plan_version(result.plan_version);
  response->set_kv_cache_bytes(result.kv_cache_bytes);
  response->set_full_cache_bytes(result.full_cache_bytes);
  response->set_prefill_seconds(result.prefill_seconds);
  response->set_decode_seconds(result.decode_seconds);
  for (int32_t t : result.token_ids) response->add_token_ids(t);
  response->set_finish_reason(result.finish_reason);
  response->set_reserved_bytes(result.reserved_bytes);
  response->set_queue_seconds(result.queue_seconds);
  response->set_shadow_steps(result.shadow_steps);
  response->set_shadow_agreements(result.shadow_agreements);
  response->set_shadow_kl_nats(result.shadow_kl_sum);
}

}  // namespace

grpc::Status NodeService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                   v1::GenerateResponse* response) {
  if (grpc::Status auth = auth_.Mutating(*context); !auth.ok()) return auth;
  absl::StatusOr<GenerateRequest> r = FromProto(context, *request);
  if (!r.ok()) return rpc::ToGrpcStatus(r.status());
  absl::StatusOr<GenerateResult> result = node_->Generate(*std::move(r));
  if (!result.ok()) return rpc::ToGrpcStatus(result.status());
  ToProto(*result, response);
  return grpc::Status::OK;
}

grpc::Status NodeService::GenerateStream(grpc::ServerContext* context,
                                         const v1::GenerateRequest* request,
                                         grpc::ServerWriter<v1::GenerateChunk>* writer) {
  if (grpc::Status auth = auth_.Mutating(*context); !auth.ok()) return auth;
  absl::StatusOr<GenerateRequest> r = FromProto(context, *request);
  if (!r.ok()) return rpc::ToGrpcStatus(r.status());
  // The engine thread hands tokens over; this thread writes them, so a slow
  // client never stalls the other sequences' decoding.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<int32_t> pending;
  bool finished = false;
  absl::StatusOr<GenerateResult> result = absl::UnknownError("not run");
  r->on_token = [&](int32_t t) {
    std::lock_guard<std::mutex> lock(mu);
    pending.push_back(t);
    cv.notify_one();
  };
  std::thread worker([&] {
    absl::StatusOr<GenerateResult> out = node_->Generate(*std::move(r));
    std::lock_guard<std::mutex> lock(mu);
    result = std::move(out);
    finished = true;
    cv.notify_one();
  });
  bool writable = true;
  for (;;) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return finished || !pending.empty(); });
    std::deque<int32_t> tokens;
    tokens.swap(pending);
    const bool done = finished;
    lock.unlock();
    if (!tokens.empty() && writable) {
      v1::GenerateChunk chunk;
      for (int32_t t : tokens) {
        chunk.add_token_ids(t);
        chunk.mutable_text()->push_back(static_cast<char>(t & 0xff));
      }
      writable = writer->Write(chunk);  // false: the client went away (cancellation follows)
    }
    if (done) break;
  }
  worker.join();
  if (!result.ok()) return rpc::ToGrpcStatus(result.status());
  v1::GenerateChunk last;
  ToProto(*result, last.mutable_done());
  writer->Write(last);
  return grpc::Status::OK;
}

}  // namespace moend::node

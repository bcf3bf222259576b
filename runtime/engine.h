// The serving engine (docs/DESIGN.md section 5.5): a KV pool with a byte
// budget, admission by the bytes a request's caches will really take under
// its plan, and continuous batching.
//
// One engine thread runs the loop: admit the first queued request when its
// reservation fits the pool and no other prefill is under way (first come,
// first served), run a bounded piece of that request's streaming prefill
// (section 5.1; runtime::PrefillRun, EngineOptions::prefill_rows_per_step),
// then one decode step for every running sequence at once (runtime::Step),
// deliver the tokens, and finish sequences (length, stop sequence,
// cancellation, deadline), whose bytes go back to the pool at once. A prompt
// arriving thus delays running sequences by one piece of prefill per token,
// not by its whole prefill. Callers block in Generate on their own threads.
#ifndef MOEND_RUNTIME_ENGINE_H_
#define MOEND_RUNTIME_ENGINE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <span>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/compression.h"
#include "kernels/cpu_attention.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "runtime/model.h"
#include "runtime/sampler.h"

namespace moend::runtime {

struct EngineOptions {
  // Bytes the KV caches of all admitted sequences may reserve together.
  int64_t kv_pool_bytes = int64_t{1} << 30;
  // Sequences decoded in one step at most; more wait in the queue.
  int64_t max_running = 256;
  // Prefill work between two decode steps (runtime::PrefillRun::Advance):
  // at least this many rows of work units (a chunk of 256 token rows of a
  // layer's projections, attention or MLP, or its compression). A prompt of n
  // tokens is about 3n rows per layer, so 4096 runs a layer of a
  // 1,300-token prompt per step, and a third of one of 4,000 tokens.
  int64_t prefill_rows_per_step = 4096;
  kernels::CpuIsa isa = kernels::CpuIsa::kBest;
  // The clock of deadlines and latencies; empty = absl::Now. Tests set one
  // to expire a deadline at a chosen token instead of after a time window.
  std::function<absl::Time()> clock;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  // One tuple per layer, or one per layer and KV head (index l * num_kv_heads
  // + h; runtime/streaming_prefill.h); (1,16,16) everywhere = full cache.
  std::vector<CompressionTuple> plan;
  int64_t max_new_tokens = 32;         // 1..4096
  SamplingParams sampling;
  // Generation ends after any of these token sequences (at most 16, each of
  // at most 256 tokens). The stop sequence itself is not in the output: a
  // token that may begin one is held back from on_token until the sequence
  // either completes (the held tokens are dropped) or cannot (they are
  // delivered).
  std::vector<std::vector<int32_t>> stop;
  absl::Time deadline = absl::InfiniteFuture();
  // Called on the engine thread with each output token, in order; may be
  // empty.
  std::function<void(int32_t token)> on_token;
  // Polled once per step; true cancels the request. May be empty.
  std::function<bool()> cancelled;
  // Shadow measurement (docs/DESIGN.md section 5.5): also decode the first
  // `shadow_tokens` generated tokens with the full fp16 cache, fed the same
  // tokens, and compare the next-token distributions. 0 = no shadow. The
  // shadow's cache is reserved in the pool too. `shadow_label` names the plan
  // in the metrics (e.g. its version).
  int64_t shadow_tokens = 0;
  std::string shadow_label;
};

enum class FinishReason { kLength, kStop };

struct GenerationResult {
  std::vector<int32_t> tokens;   // the output: generated tokens less a matched stop sequence
  int64_t generated_tokens = 0;  // tokens the model generated (the stop sequence included)
  FinishReason finish = FinishReason::kLength;
  int64_t prompt_tokens = 0;
  int64_t kv_cache_bytes = 0;    // what the caches held at the end (section 2.9)
  int64_t full_cache_bytes = 0;  // an fp16 cache of the same tokens
  int64_t reserved_bytes = 0;    // what the request held in the pool
  double queue_seconds = 0;
  double prefill_seconds = 0;    // prefill of the prompt and the first token
  double decode_seconds = 0;
  // Shadow comparisons (steps after the first token, at most shadow_tokens - 1):
  // how many, how often the greedy tokens agreed, and the summed
  // KL(full || compressed) of the next-token distributions, in nats.
  int64_t shadow_steps = 0;
  int64_t shadow_agreements = 0;
  double shadow_kl_sum = 0;
};

class Engine {
 public:
  // metrics may be null.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const Model& model,
                                                        const EngineOptions& options,
                                                        prometheus::Registry* metrics);
  // Stops the loop; requests still queued or running fail with UNAVAILABLE.
  ~Engine();

  // Blocks until the request ends. InvalidArgument for a bad request;
  // RESOURCE_EXHAUSTED when its caches could never fit the pool (the message
  // names both sizes); CANCELLED / DEADLINE_EXCEEDED when it was cancelled or
  // ran out of time, queued or running (its bytes are freed at once).
  absl::StatusOr<GenerationResult> Generate(GenerationRequest request);

  struct Stats {
    // running: admitted (prefilling included); prefilling: 0 or 1.
    int64_t pool_bytes = 0, used_bytes = 0, running = 0, queued = 0, prefilling = 0;
  };
  Stats stats() const;
  const Model& model() const { return model_; }

 private:
  struct Job;
  struct Metrics;
  Engine(const Model& model, const EngineOptions& options, prometheus::Registry* metrics);
  void Loop();
  void Admit(std::vector<std::shared_ptr<Job>>* admitted);
  void StartJob(const std::shared_ptr<Job>& job);
  // Runs the next layer of prefilling_'s prefill; after the last, the job
  // joins running_ with its first token.
  void AdvancePrefill();
  void DecodeStep();
  // Ends a job: returns its bytes to the pool and wakes its caller.
  void Finish(const std::shared_ptr<Job>& job, absl::Status status);
  bool Deliver(const std::shared_ptr<Job>& job, int32_t token);
  void CompareShadow(const std::shared_ptr<Job>& job, std::span<const float> main,
                     std::span<const float> shadow);
  void Publish();
  absl::Time Now() const { return options_.clock ? options_.clock() : absl::Now(); }

  const Model& model_;
  const EngineOptions options_;
  std::unique_ptr<Metrics> metrics_;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  int64_t used_bytes_ = 0;
  std::deque<std::shared_ptr<Job>> queue_;  // guarded by mu_
  std::shared_ptr<Job> prefilling_;            // engine thread only: admitted, prefill under way
  std::atomic<bool> prefill_under_way_{false};  // prefilling_ != null, for stats()
  std::vector<std::shared_ptr<Job>> running_;  // engine thread only (size mirrored in stats)
  int64_t running_count_ = 0;                  // guarded by mu_
  std::thread thread_;
};

}  // namespace moend::runtime

#endif  // MOEND_RUNTIME_ENGINE_H_

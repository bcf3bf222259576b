#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "runtime/sequence.h"
#include "runtime/streaming_prefill.h"

namespace moend::runtime {

struct Engine::Job {
  GenerationRequest request;
  int64_t reserved = 0;
  bool admitted = false;
  std::unique_ptr<PrefillRun> prefill;  // while the prompt is prefilled
  std::unique_ptr<Sequence> sequence;
  std::unique_ptr<Sequence> shadow;  // the full cache, while shadow steps remain
  std::unique_ptr<Sampler> sampler;
  GenerationResult result;
  int32_t next_input = 0;  // the token the next decode step feeds
  size_t delivered = 0;    // result.tokens[0, delivered) went to on_token
  absl::Time enqueued, started, last_token;

  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  absl::Status status;
};

struct Engine::Metrics {
  prometheus::Gauge* pool_used = nullptr;
  prometheus::Gauge* pool_free = nullptr;
  prometheus::Gauge* running = nullptr;
  prometheus::Gauge* queued = nullptr;
  prometheus::Gauge* prefilling = nullptr;
  prometheus::Histogram* ttft = nullptr;
  prometheus::Histogram* itl = nullptr;
  prometheus::Counter* prefill_seconds = nullptr;  // engine thread time in prefill layers
  prometheus::Counter* decode_seconds = nullptr;   // engine thread time in decode steps
  prometheus::Counter* decode_steps = nullptr;
  prometheus::Counter* decode_tokens = nullptr;    // sequences' tokens from decode steps
  prometheus::Family<prometheus::Counter>* shadow_steps = nullptr;
  prometheus::Family<prometheus::Counter>* shadow_agreements = nullptr;
  prometheus::Family<prometheus::Counter>* shadow_kl = nullptr;
};

namespace {

prometheus::Histogram::BucketBoundaries Exponential(double start, double factor, int count) {
  prometheus::Histogram::BucketBoundaries b;
  for (int i = 0; i < count; ++i, start *= factor) b.push_back(start);
  return b;
}

bool EndsWith(const std::vector<int32_t>& tokens, const std::vector<int32_t>& suffix) {
  return suffix.size() <= tokens.size() &&
         std::equal(suffix.rbegin(), suffix.rend(), tokens.rbegin());
}

// The most trailing tokens that are a proper prefix of some stop sequence:
// they may yet become one, so they are held back from the stream.
size_t HeldBack(const std::vector<int32_t>& tokens, const std::vector<std::vector<int32_t>>& stops) {
  size_t held = 0;
  for (const auto& stop : stops) {
    for (size_t k = std::min(stop.size() - 1, tokens.size()); k > held; --k) {
      if (std::equal(stop.begin(), stop.begin() + static_cast<std::ptrdiff_t>(k),
                     tokens.end() - static_cast<std::ptrdiff_t>(k))) {
        held = k;
        break;
      }
    }
  }
  return held;
}

constexpr size_t kMaxStopSequences = 16;
constexpr size_t kMaxStopTokens = 256;

absl::Status ValidateRequest(const ModelConfig& c, const GenerationRequest& r) {
  if (r.prompt.empty()) return absl::InvalidArgumentError("prompt is empty");
  MOEND_RETURN_IF_ERROR(Model::CheckTokens(c, r.prompt));
  if (r.max_new_tokens < 1 || r.max_new_tokens > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens ", r.max_new_tokens, " is outside [1, 4096]"));
  }
  const int64_t limit = c.max_position_embeddings > 0 ? c.max_position_embeddings : 1 << 20;
  if (static_cast<int64_t>(r.prompt.size()) + r.max_new_tokens > limit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt of ", r.prompt.size(), " tokens plus ", r.max_new_tokens,
        " new tokens exceeds the model's context of ", limit));
  }
  MOEND_RETURN_IF_ERROR(ValidatePlan(c, r.plan));
  MOEND_RETURN_IF_ERROR(ValidateSampling(r.sampling));
  if (r.stop.size() > kMaxStopSequences) {
    return absl::InvalidArgumentError(absl::StrCat(r.stop.size(), " stop sequences; at most ",
                                                   kMaxStopSequences, " are allowed"));
  }
  for (size_t i = 0; i < r.stop.size(); ++i) {
    if (r.stop[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("stop sequence ", i, " is empty"));
    }
    if (r.stop[i].size() > kMaxStopTokens) {
      return absl::InvalidArgumentError(absl::StrCat("stop sequence ", i, " has ",
                                                     r.stop[i].size(), " tokens; at most ",
                                                     kMaxStopTokens, " are allowed"));
    }
    for (int32_t t : r.stop[i]) {
      if (t < 0 || t >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("stop sequence ", i, " holds token ", t,
                                                       ", outside [0, ", c.vocab_size, ")"));
      }
    }
  }
  return absl::OkStatus();
}

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const Model& model,
                                                       const EngineOptions& options,
                                                       prometheus::Registry* metrics) {
  if (options.kv_pool_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV pool of ", options.kv_pool_bytes, " bytes must be positive"));
  }
  if (options.max_running <= 0) {
    return absl::InvalidArgumentError("max_running must be positive");
  }
  if (options.prefill_rows_per_step <= 0) {
    return absl::InvalidArgumentError("prefill_rows_per_step must be positive");
  }
  MOEND_RETURN_IF_ERROR(kernels::CheckCpuIsa(options.isa));
  return std::unique_ptr<Engine>(new Engine(model, options, metrics));
}

Engine::Engine(const Model& model, const EngineOptions& options, prometheus::Registry* metrics)
    : model_(model), options_(options), metrics_(std::make_unique<Metrics>()) {
  if (metrics != nullptr) {
    auto& pool = prometheus::BuildGauge()
                     .Name("moend_node_kv_pool_bytes")
                     .Help("KV pool bytes reserved by admitted sequences (used) and left (free)")
                     .Register(*metrics);
    metrics_->pool_used = &pool.Add({{"state", "used"}});
    metrics_->pool_free = &pool.Add({{"state", "free"}});
    auto& seqs = prometheus::BuildGauge()
                     .Name("moend_node_sequences")
                     .Help("Sequences admitted (running; a prefilling one included), of them "
                           "prefilling a prompt (prefilling: 0 or 1), and waiting for pool "
                           "bytes (queued)")
                     .Register(*metrics);
    metrics_->running = &seqs.Add({{"state", "running"}});
    metrics_->queued = &seqs.Add({{"state", "queued"}});
    metrics_->prefilling = &seqs.Add({{"state", "prefilling"}});
    metrics_->ttft = &prometheus::BuildHistogram()
                          .Name("moend_node_time_to_first_token_seconds")
                          .Help("From a request's arrival to its first generated token")
                          .Register(*metrics)
                          .Add({}, Exponential(0.005, 2, 16));
    metrics_->itl = &prometheus::BuildHistogram()
                         .Name("moend_node_inter_token_seconds")
                         .Help("Between consecutive generated tokens of a request")
                         .Register(*metrics)
                         .Add({}, Exponential(0.0005, 2, 16));
    auto& busy = prometheus::BuildCounter()
                     .Name("moend_node_engine_seconds_total")
                     .Help("Engine thread time running prefill layers and decode steps")
                     .Register(*metrics);
    metrics_->prefill_seconds = &busy.Add({{"phase", "prefill"}});
    metrics_->decode_seconds = &busy.Add({{"phase", "decode"}});
    metrics_->decode_steps = &prometheus::BuildCounter()
                                  .Name("moend_node_decode_steps_total")
                                  .Help("Decode steps, each one forward for every running "
                                        "sequence")
                                  .Register(*metrics)
                                  .Add({});
    metrics_->decode_tokens = &prometheus::BuildCounter()
                                   .Name("moend_node_decode_tokens_total")
                                   .Help("Tokens generated by decode steps (shadows excluded); "
                                         "over steps, the mean batch")
                                   .Register(*metrics)
                                   .Add({});
    metrics_->shadow_steps =
        &prometheus::BuildCounter()
             .Name("moend_node_shadow_steps_total")
             .Help("Decode steps compared against a full-cache shadow, by plan")
             .Register(*metrics);
    metrics_->shadow_agreements =
        &prometheus::BuildCounter()
             .Name("moend_node_shadow_agreements_total")
             .Help("Shadow-compared steps whose greedy token equals the full cache's, by plan")
             .Register(*metrics);
    metrics_->shadow_kl = &prometheus::BuildCounter()
                               .Name("moend_node_shadow_kl_nats_total")
                               .Help("Summed KL(full || compressed) of next-token distributions "
                                     "over shadow-compared steps, in nats, by plan")
                               .Register(*metrics);
  }
  Publish();
  thread_ = std::thread([this] { Loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

Engine::Stats Engine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {options_.kv_pool_bytes, used_bytes_, running_count_,
          static_cast<int64_t>(queue_.size()), prefill_under_way_.load() ? 1 : 0};
}

void Engine::Publish() {
  if (metrics_->pool_used == nullptr) return;
  const Stats s = stats();
  metrics_->pool_used->Set(static_cast<double>(s.used_bytes));
  metrics_->pool_free->Set(static_cast<double>(s.pool_bytes - s.used_bytes));
  metrics_->running->Set(static_cast<double>(s.running));
  metrics_->queued->Set(static_cast<double>(s.queued));
  metrics_->prefilling->Set(static_cast<double>(s.prefilling));
}

absl::StatusOr<GenerationResult> Engine::Generate(GenerationRequest request) {
  const ModelConfig& c = model_.config();
  MOEND_RETURN_IF_ERROR(ValidateRequest(c, request));
  auto job = std::make_shared<Job>();
  job->reserved = ReservedSequenceBytes(c, request.plan,
                                        static_cast<int64_t>(request.prompt.size()),
                                        request.max_new_tokens - 1);
  if (request.shadow_tokens < 0) {
    return absl::InvalidArgumentError("shadow_tokens must not be negative");
  }
  request.shadow_tokens = std::min(request.shadow_tokens, request.max_new_tokens);
  if (request.shadow_tokens > 1) {
    job->reserved += ReservedSequenceBytes(
        c, std::vector<CompressionTuple>(static_cast<size_t>(c.num_layers)),
        static_cast<int64_t>(request.prompt.size()), request.shadow_tokens - 1);
  }
  if (job->reserved > options_.kv_pool_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the KV caches of this request need ", job->reserved, " bytes under its plan (prompt of ",
        request.prompt.size(), " tokens + ", request.max_new_tokens,
        " new), more than the whole KV pool of ", options_.kv_pool_bytes,
        " bytes (--kv-pool-bytes)"));
  }
  job->request = std::move(request);
  job->enqueued = Now();
  job->result.prompt_tokens = static_cast<int64_t>(job->request.prompt.size());
  job->result.reserved_bytes = job->reserved;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the engine is shutting down");
    queue_.push_back(job);
  }
  wake_.notify_all();
  Publish();
  std::unique_lock<std::mutex> lock(job->mu);
  job->cv.wait(lock, [&] { return job->done; });
  if (!job->status.ok()) return job->status;
  return std::move(job->result);
}

void Engine::Loop() {
  for (;;) {
    std::vector<std::shared_ptr<Job>> expired, admitted;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Queued requests wait for bytes; wake now and then to expire them.
      if (running_.empty() && !prefilling_) {
        wake_.wait_for(lock, std::chrono::milliseconds(20),
                       [&] { return stopping_ || !queue_.empty(); });
      }
      if (stopping_) break;
      const absl::Time now = Now();
      for (auto it = queue_.begin(); it != queue_.end();) {
        const GenerationRequest& r = (*it)->request;
        if (now > r.deadline || (r.cancelled && r.cancelled())) {
          expired.push_back(*it);
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
      // First come, first served, one prefill at a time (it runs a layer per
      // turn between decode steps).
      if (!prefilling_ && !queue_.empty() && running_count_ < options_.max_running &&
          used_bytes_ + queue_.front()->reserved <= options_.kv_pool_bytes) {
        std::shared_ptr<Job> job = queue_.front();
        queue_.pop_front();
        used_bytes_ += job->reserved;
        job->admitted = true;
        ++running_count_;
        admitted.push_back(job);
      }
    }
    for (const auto& job : expired) {
      const bool late = Now() > job->request.deadline;
      Finish(job, late ? absl::DeadlineExceededError("the deadline passed while the request "
                                                     "waited for KV pool bytes")
                       : absl::CancelledError("the request was cancelled while queued"));
    }
    for (const auto& job : admitted) StartJob(job);
    if (prefilling_) {
      const auto t0 = std::chrono::steady_clock::now();
      AdvancePrefill();
      if (metrics_->prefill_seconds) {
        metrics_->prefill_seconds->Increment(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
    }
    if (!running_.empty()) DecodeStep();
    Publish();
  }
  std::deque<std::shared_ptr<Job>> queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queued.swap(queue_);
  }
  for (const auto& job : queued) Finish(job, absl::UnavailableError("the engine is shutting down"));
  if (prefilling_) {
    const std::shared_ptr<Job> job = prefilling_;  // Finish resets prefilling_
    Finish(job, absl::UnavailableError("the engine is shutting down"));
  }
  for (const auto& job : std::vector<std::shared_ptr<Job>>(running_)) {
    Finish(job, absl::UnavailableError("the engine is shutting down"));
  }
}

void Engine::StartJob(const std::shared_ptr<Job>& job) {
  job->started = Now();
  job->result.queue_seconds = Seconds(job->started - job->enqueued);
  const GenerationRequest& r = job->request;
  PrefillOptions options;
  options.appended_capacity = r.max_new_tokens - 1;
  std::vector<std::vector<CompressionTuple>> plans{r.plan};
  if (r.shadow_tokens > 1) {
    plans.emplace_back(static_cast<size_t>(model_.config().num_layers));
    options.appended_per_plan = {r.max_new_tokens - 1, r.shadow_tokens - 1};
  }
  auto prefill = PrefillRun::Start(model_, r.prompt, plans, options);
  if (!prefill.ok()) {
    Finish(job, prefill.status());
    return;
  }
  job->prefill = std::move(*prefill);
  prefilling_ = job;
  prefill_under_way_ = true;
}

void Engine::AdvancePrefill() {
  const std::shared_ptr<Job> job = prefilling_;
  const GenerationRequest& r = job->request;
  if (Now() > r.deadline) {
    Finish(job, absl::DeadlineExceededError("the deadline passed during the prompt's prefill"));
    return;
  }
  if (r.cancelled && r.cancelled()) {
    Finish(job, absl::CancelledError("the request was cancelled during the prompt's prefill"));
    return;
  }
  if (const absl::Status s = job->prefill->Advance(options_.prefill_rows_per_step); !s.ok()) {
    Finish(job, s);
    return;
  }
  if (!job->prefill->done()) return;
  PrefillResult prefill = job->prefill->TakeResult();
  job->prefill.reset();
  prefilling_.reset();
  prefill_under_way_ = false;
  const int64_t n = static_cast<int64_t>(r.prompt.size());
  job->sequence = std::make_unique<Sequence>(std::move(prefill.caches[0]), n);
  int64_t capacity = job->sequence->CapacityBytes();
  if (prefill.caches.size() > 1) {
    job->shadow = std::make_unique<Sequence>(std::move(prefill.caches[1]), n);
    capacity += job->shadow->CapacityBytes();
  }
  if (capacity > job->reserved) {  // broken invariant: the pool would be overdrawn
    Finish(job, absl::InternalError(absl::StrCat("caches take ", capacity,
                                                 " bytes, more than the ", job->reserved,
                                                 " reserved")));
    return;
  }
  job->sampler = std::make_unique<Sampler>(r.sampling);
  running_.push_back(job);
  const int32_t token = job->sampler->Next(prefill.last_logits);
  job->result.prefill_seconds = Seconds(Now() - job->started);
  if (metrics_->ttft) metrics_->ttft->Observe(Seconds(Now() - job->enqueued));
  Deliver(job, token);
}

bool Engine::Deliver(const std::shared_ptr<Job>& job, int32_t token) {
  const absl::Time now = Now();
  GenerationResult& result = job->result;
  if (metrics_->itl && result.generated_tokens > 0) {
    metrics_->itl->Observe(Seconds(now - job->last_token));
  }
  job->last_token = now;
  ++result.generated_tokens;
  result.tokens.push_back(token);
  // Hand on what can no longer be part of a stop sequence; on a match, drop
  // the longest stop sequence that matched.
  size_t matched = 0;
  for (const auto& stop : job->request.stop) {
    if (EndsWith(result.tokens, stop)) matched = std::max(matched, stop.size());
  }
  const bool length = result.generated_tokens >= job->request.max_new_tokens;
  if (matched > 0) result.tokens.resize(result.tokens.size() - matched);
  const size_t ready = matched > 0 || length
                           ? result.tokens.size()
                           : result.tokens.size() - HeldBack(result.tokens, job->request.stop);
  if (job->request.on_token) {
    for (; job->delivered < ready; ++job->delivered) {
      job->request.on_token(result.tokens[job->delivered]);
    }
  }
  job->delivered = std::max(job->delivered, ready);
  if (matched > 0 || length) {
    result.finish = matched > 0 ? FinishReason::kStop : FinishReason::kLength;
    Finish(job, absl::OkStatus());
    return false;
  }
  job->next_input = token;
  return true;
}

void Engine::DecodeStep() {
  const absl::Time now = Now();
  for (const auto& job : std::vector<std::shared_ptr<Job>>(running_)) {
    const GenerationRequest& r = job->request;
    if (now > r.deadline) {
      Finish(job, absl::DeadlineExceededError(absl::StrCat(
                      "the deadline passed after ", job->result.generated_tokens, " tokens")));
    } else if (r.cancelled && r.cancelled()) {
      Finish(job, absl::CancelledError("the request was cancelled"));
    }
  }
  if (running_.empty()) return;
  const std::vector<std::shared_ptr<Job>> batch = running_;
  std::vector<StepInput> inputs;
  inputs.reserve(2 * batch.size());
  for (const auto& job : batch) {
    inputs.push_back({job->sequence.get(), std::span<const int32_t>(&job->next_input, 1)});
  }
  // Shadows follow their sequence with the same input token; their rows come
  // after every sequence's row.
  std::vector<size_t> shadow_row(batch.size(), 0);
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i]->shadow) {
      shadow_row[i] = inputs.size();
      inputs.push_back(
          {batch[i]->shadow.get(), std::span<const int32_t>(&batch[i]->next_input, 1)});
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits;
  const absl::Status s = Step(model_, inputs, &logits, options_.isa);
  if (!s.ok()) {
    for (const auto& job : batch) Finish(job, s);
    return;
  }
  // Counted before any token is delivered, so a caller that has its result
  // sees its steps counted.
  if (metrics_->decode_seconds) {
    metrics_->decode_seconds->Increment(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    metrics_->decode_steps->Increment();
    metrics_->decode_tokens->Increment(static_cast<double>(batch.size()));
  }
  const size_t vocab = static_cast<size_t>(model_.config().vocab_size);
  for (size_t i = 0; i < batch.size(); ++i) {
    const std::span<const float> row(logits.data() + i * vocab, vocab);
    if (batch[i]->shadow) {
      CompareShadow(batch[i], row,
                    std::span<const float>(logits.data() + shadow_row[i] * vocab, vocab));
    }
    Deliver(batch[i], batch[i]->sampler->Next(row));
  }
}

void Engine::CompareShadow(const std::shared_ptr<Job>& job, std::span<const float> main,
                           std::span<const float> shadow) {
  // KL(P_full || P_compressed) = sum p_full (log p_full - log p_compressed).
  auto log_softmax = [](std::span<const float> x, std::vector<double>& out) {
    const double mx = *std::max_element(x.begin(), x.end());
    double z = 0;
    for (float v : x) z += std::exp(static_cast<double>(v) - mx);
    const double lz = std::log(z) + mx;
    out.resize(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = static_cast<double>(x[i]) - lz;
  };
  std::vector<double> lp, lq;
  log_softmax(shadow, lp);
  log_softmax(main, lq);
  double kl = 0;
  for (size_t i = 0; i < lp.size(); ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
  const bool agree = Argmax(main) == Argmax(shadow);
  GenerationResult& r = job->result;
  ++r.shadow_steps;
  r.shadow_agreements += agree ? 1 : 0;
  r.shadow_kl_sum += std::max(0.0, kl);
  if (metrics_->shadow_steps != nullptr) {
    const std::map<std::string, std::string> labels{{"plan", job->request.shadow_label}};
    metrics_->shadow_steps->Add(labels).Increment();
    if (agree) metrics_->shadow_agreements->Add(labels).Increment();
    metrics_->shadow_kl->Add(labels).Increment(std::max(0.0, kl));
  }
  // The shadow has decoded its share once the sequence has shadow_tokens tokens.
  if (r.generated_tokens + 1 >= job->request.shadow_tokens) {
    job->shadow.reset();
  }
}

void Engine::Finish(const std::shared_ptr<Job>& job, absl::Status status) {
  if (prefilling_ == job) {
    prefilling_.reset();
    prefill_under_way_ = false;
  }
  job->prefill.reset();
  job->shadow.reset();
  if (job->sequence) {
    job->result.kv_cache_bytes = job->sequence->CacheBytes();
    job->result.full_cache_bytes = job->sequence->UncompressedBytes(model_.config());
    job->sequence.reset();  // the caches' memory goes back now
  }
  if (job->started != absl::Time()) {
    job->result.decode_seconds =
        Seconds(Now() - job->started) - job->result.prefill_seconds;
  }
  running_.erase(std::remove(running_.begin(), running_.end(), job), running_.end());
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (job->admitted) {
      used_bytes_ -= job->reserved;
      --running_count_;
      job->admitted = false;
    }
  }
  Publish();  // before the caller wakes: it sees the gauges without its bytes
  wake_.notify_all();
  {
    std::lock_guard<std::mutex> lock(job->mu);
    job->status = std::move(status);
    job->done = true;
  }
  job->cv.notify_all();
}

}  // namespace moend::runtime

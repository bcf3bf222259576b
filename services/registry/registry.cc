#include "services/registry/registry.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status_macros.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "services/registry/merge.h"
#include "services/registry/model_config.h"
#include "services/registry/records.h"

namespace moend::registry {
namespace {

using storage::Column;
using records::JobKey;
using records::ReportKey;
using records::ShardKey;
using records::VersionKey;

// Names of models and jobs: used in keys, so no '/'.
absl::Status ValidateName(const char* what, const std::string& name) {
  bool ok = !name.empty() && name.size() <= 128;
  for (char c : name) {
    ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-');
  }
  if (ok) return absl::OkStatus();
  const std::string shown = absl::CHexEscape(name.substr(0, 64));
  return absl::InvalidArgumentError(absl::StrCat(what, " '", shown,
                                                 name.size() > 64 ? "...' (" : "' (",
                                                 name.size(), " bytes)",
                                                 " is not allowed: use 1 to 128 of the "
                                                 "characters A-Z a-z 0-9 . _ -"));
}

struct LeaseRef {
  std::string job_id;
  int64_t shard = 0;
  int64_t attempt = 0;
};

std::string LeaseId(const std::string& job_id, int64_t shard, int64_t attempt) {
  return absl::StrCat(job_id, "/", shard, "/", attempt);
}

absl::StatusOr<LeaseRef> ParseLeaseId(const std::string& lease_id) {
  size_t b = lease_id.rfind('/');
  size_t a = b == std::string::npos || b == 0 ? std::string::npos : lease_id.rfind('/', b - 1);
  LeaseRef ref;
  if (a == std::string::npos || a == 0 ||
      !absl::SimpleAtoi(lease_id.substr(a + 1, b - a - 1), &ref.shard) ||
      !absl::SimpleAtoi(lease_id.substr(b + 1), &ref.attempt)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lease id '", lease_id, "' is malformed; use the lease_id LeaseShard returned"));
  }
  ref.job_id = lease_id.substr(0, a);
  return ref;
}

// The checks of a report's numbers that need no registry state: each row
// has one value per tuple, every value is finite and >= 0. Run before the
// registry's mutex is taken; ValidateReport returns the result only after
// its own checks, so the first problem reported is the same as before.
absl::Status CheckValues(const PartialTable& t) {
  for (size_t l = 0; l < t.s.size(); ++l) {
    if (t.s[l].size() != t.tuples.size()) {
      return absl::InvalidArgumentError(absl::StrCat("row of layer ", t.layer_begin + l,
                                                     " has ", t.s[l].size(), " values for ",
                                                     t.tuples.size(), " tuples"));
    }
    for (size_t i = 0; i < t.s[l].size(); ++i) {
      double v = t.s[l][i];
      if (!std::isfinite(v) || v < 0) {
        return absl::InvalidArgumentError(absl::StrCat("s[layer ", t.layer_begin + l,
                                                       "][tuple ", i, "] = ", v,
                                                       " is not a finite value >= 0"));
      }
    }
  }
  for (size_t l = 0; l < t.s_head.size(); ++l) {
    if (t.s_head[l].empty() || t.s_head[l].size() != t.s_head[0].size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "per-head rows of layer ", t.layer_begin + l, " are for ", t.s_head[l].size(),
          " KV heads, those of layer ", t.layer_begin, " for ", t.s_head[0].size(),
          "; every layer needs one row per KV head of the model"));
    }
    for (size_t h = 0; h < t.s_head[l].size(); ++h) {
      const std::vector<double>& row = t.s_head[l][h];
      if (row.size() != t.tuples.size()) {
        return absl::InvalidArgumentError(absl::StrCat("per-head row of layer ", t.layer_begin + l,
                                                       " head ", h, " has ", row.size(),
                                                       " values for ", t.tuples.size(), " tuples"));
      }
      for (size_t i = 0; i < row.size(); ++i) {
        if (!std::isfinite(row[i]) || row[i] < 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "s_head[layer ", t.layer_begin + l, "][head ", h, "][tuple ", i, "] = ", row[i],
              " is not a finite value >= 0"));
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

struct Registry::Metrics {
  explicit Metrics(prometheus::Registry& r)
      : reports(prometheus::BuildCounter()
                    .Name("moend_registry_reports_total")
                    .Help("Shard reports received, by result")
                    .Register(r)),
        accepted(reports.Add({{"result", "accepted"}})),
        duplicate(reports.Add({{"result", "duplicate"}})),
        rejected(reports.Add({{"result", "rejected"}})),
        jobs(prometheus::BuildGauge()
                 .Name("moend_registry_jobs")
                 .Help("Calibration jobs, by state")
                 .Register(r)),
        pending(jobs.Add({{"state", "pending"}})),
        running(jobs.Add({{"state", "running"}})),
        done(jobs.Add({{"state", "done"}})),
        writes(prometheus::BuildHistogram()
                   .Name("moend_registry_write_seconds")
                   .Help("Latency of one synced store write")
                   .Register(r)),
        write_seconds(writes.Add({}, prometheus::Histogram::BucketBoundaries{
                                         0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                         0.025, 0.05, 0.1, 0.25, 1})),
        leases(prometheus::BuildCounter()
                   .Name("moend_registry_leases_total")
                   .Help("Shard leases granted; reassigned = a lapsed lease handed out again")
                   .Register(r)),
        new_leases(leases.Add({{"kind", "new"}})),
        reassigned(leases.Add({{"kind", "reassigned"}})) {}

  prometheus::Family<prometheus::Counter>& reports;
  prometheus::Counter& accepted;
  prometheus::Counter& duplicate;
  prometheus::Counter& rejected;
  prometheus::Family<prometheus::Gauge>& jobs;
  prometheus::Gauge& pending;
  prometheus::Gauge& running;
  prometheus::Gauge& done;
  prometheus::Family<prometheus::Histogram>& writes;
  prometheus::Histogram& write_seconds;
  prometheus::Family<prometheus::Counter>& leases;
  prometheus::Counter& new_leases;
  prometheus::Counter& reassigned;
};

Registry::Registry(std::unique_ptr<storage::Store> store, RegistryOptions options)
    : options_(options),
      clock_(options.clock ? options.clock : Clock::Real()),
      metrics_(options.metrics ? std::make_unique<Metrics>(*options.metrics) : nullptr),
      store_(std::move(store)) {}

Registry::~Registry() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Registry>> Registry::Open(std::unique_ptr<storage::Store> store,
                                                         RegistryOptions options) {
  if (store == nullptr) return absl::InvalidArgumentError("Registry::Open needs a store");
  if (options.lease_duration <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("lease_duration must be positive");
  }
  MOEND_RETURN_IF_ERROR(records::PrepareFormat(*store));
  std::unique_ptr<Registry> r(new Registry(std::move(store), options));
  MOEND_RETURN_IF_ERROR(r->Load());
  return r;
}

absl::Status Registry::Load() {
  absl::MutexLock lock(&mu_);
  MOEND_ASSIGN_OR_RETURN(auto models, store_->Scan(Column::kModels, ""));
  for (const storage::KeyValue& kv : models) {
    MOEND_ASSIGN_OR_RETURN(ModelInfo m, records::DecodeModel(kv.value, "models/" + kv.key));
    models_[kv.key].info = std::move(m);
  }
  MOEND_ASSIGN_OR_RETURN(auto jobs, store_->Scan(Column::kJobs, records::kJobPrefix));
  for (const storage::KeyValue& kv : jobs) {
    MOEND_ASSIGN_OR_RETURN(records::StoredJob stored,
                           records::DecodeJob(kv.value, "jobs/" + kv.key));
    const std::string id = stored.job.spec.job_id;
    if (!models_.contains(stored.job.spec.model) || jobs_.contains(id)) {
      return absl::DataLossError(absl::StrCat("stored job '", id, "' names unknown model '",
                                              stored.job.spec.model, "' or appears twice"));
    }
    JobEntry& entry = jobs_[id];
    entry.job = std::move(stored.job);
    Job& job = entry.job;
    MOEND_ASSIGN_OR_RETURN(auto shards, store_->Scan(Column::kJobs, records::ShardPrefix(id)));
    for (const storage::KeyValue& s : shards) {
      MOEND_ASSIGN_OR_RETURN(Shard shard, records::DecodeShard(s.value, "jobs/" + s.key));
      if (shard.index != job.shards_total()) {
        return absl::DataLossError(absl::StrCat("stored shard '", s.key, "' has index ",
                                                shard.index, "; expected ", job.shards_total()));
      }
      if (shard.state == ShardState::kDone) ++job.shards_done;
      job.shards.push_back(std::move(shard));
    }
    if (job.shards_total() != stored.shards_total) {
      return absl::DataLossError(absl::StrCat("job ", id, " has ", job.shards_total(),
                                              " stored shards but records ",
                                              stored.shards_total));
    }
    // Format 1 keeps no count in the job record: done and running follow
    // from the shards, and only completion marks the record.
    const bool all_done = job.shards_done == job.shards_total();
    if (all_done != (job.state == JobState::kDone)) {
      return absl::DataLossError(absl::StrCat(
          "job ", id, " is recorded as ", job.state == JobState::kDone ? "" : "not ",
          "complete but ", job.shards_done, " of its ", job.shards_total(), " shards are done"));
    }
    const JobState state =
        all_done ? JobState::kDone : job.shards_done > 0 ? JobState::kRunning : JobState::kPending;
    job.state = JobState::kPending;
    ++job_counts_[static_cast<int>(JobState::kPending)];
    SetJobState(entry, state);
    entry.busy.assign(job.shards.size(), 0);
    job_order_[job.sequence] = id;
    next_job_number_ = std::max(next_job_number_, job.sequence + 1);
    for (const Shard& shard : job.shards) IndexShard(entry, shard);
  }
  MOEND_ASSIGN_OR_RETURN(auto feed, store_->Scan(Column::kFeed, ""));
  for (const storage::KeyValue& kv : feed) {
    MOEND_ASSIGN_OR_RETURN(VersionEvent e, records::DecodeEvent(kv.value, "feed/" + kv.key));
    feed_[{e.model, e.version}] = std::move(e);
  }
  return absl::OkStatus();
}

absl::Status Registry::Write(const storage::WriteBatch& batch) {
  auto start = std::chrono::steady_clock::now();
  absl::Status s = store_->Write(batch);
  if (metrics_) {
    metrics_->write_seconds.Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return s;
}

absl::Status Registry::WriteUnlocked(
    absl::FunctionRef<absl::Status(storage::WriteBatch*)> build) {
  mu_.Unlock();
  storage::WriteBatch batch;
  absl::Status s = build(&batch);
  if (s.ok()) s = Write(batch);
  mu_.Lock();
  return s;
}

void Registry::SetJobState(JobEntry& entry, JobState state) {
  --job_counts_[static_cast<int>(entry.job.state)];
  ++job_counts_[static_cast<int>(state)];
  entry.job.state = state;
  if (!metrics_) return;
  metrics_->pending.Set(static_cast<double>(job_counts_[0]));
  metrics_->running.Set(static_cast<double>(job_counts_[1]));
  metrics_->done.Set(static_cast<double>(job_counts_[2]));
}

void Registry::IndexShard(const JobEntry& entry, const Shard& shard) {
  const ShardIndex::Ref ref{entry.job.sequence, shard.index};
  if (shard.state == ShardState::kPending) {
    leasable_.AddAvailable(entry.job.spec.model, ref);
  } else if (shard.state == ShardState::kLeased) {
    leasable_.AddLease(entry.job.spec.model, ref, shard.lease_expiry);
  }
}

void Registry::UnindexShard(const JobEntry& entry, const Shard& shard) {
  leasable_.Remove(entry.job.spec.model, {entry.job.sequence, shard.index}, shard.lease_expiry);
}

absl::StatusOr<ModelInfo> Registry::RegisterModel(const std::string& name,
                                                  const std::string& config_json) {
  MOEND_RETURN_IF_ERROR(ValidateName("model name", name));
  MOEND_ASSIGN_OR_RETURN(ModelShape shape, ModelShapeFromConfigJson(config_json));
  absl::MutexLock lock(&mu_);
  auto not_registering = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return !registering_.contains(name);
  };
  mu_.Await(absl::Condition(&not_registering));
  if (auto it = models_.find(name); it != models_.end()) {
    const ModelShape& have = it->second.info.shape;
    if (have == shape) return it->second.info;
    return absl::AlreadyExistsError(absl::StrCat(
        "model '", name, "' is already registered with another shape (", have.num_layers,
        " layers, ", have.num_kv_heads, " KV heads, head dim ", have.head_dim,
        "); register the new one under another name"));
  }
  ModelInfo m;
  m.name = name;
  m.shape = shape;
  m.config_json = config_json;
  m.created = m.updated = clock_->Now();
  registering_.insert(name);
  absl::Status s = WriteUnlocked([&](storage::WriteBatch* batch) {
    batch->Put(Column::kModels, name, records::EncodeModel(m));
    return absl::OkStatus();
  });
  registering_.erase(name);
  if (!s.ok()) return s;
  models_[name].info = m;
  return m;
}

absl::StatusOr<ModelInfo> Registry::GetModel(const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = models_.find(name);
  if (it == models_.end()) {
    return absl::NotFoundError(absl::StrCat("model '", name, "' is not registered"));
  }
  return it->second.info;
}

std::vector<ModelInfo> Registry::ListModels() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<ModelInfo> out;
  for (const auto& [name, m] : models_) out.push_back(m.info);
  return out;
}

absl::StatusOr<Job> Registry::NormalizeJob(JobSpec spec) const {
  auto mit = models_.find(spec.model);
  if (mit == models_.end()) {
    return absl::NotFoundError(
        absl::StrCat("model '", spec.model, "' is not registered; register it first"));
  }
  const ModelShape& shape = mit->second.info.shape;
  if (spec.tuples.empty()) spec.tuples = TupleGrid::Default().Tuples();
  std::set<std::tuple<double, int, int>> seen;
  for (const CompressionTuple& t : spec.tuples) {
    MOEND_RETURN_IF_ERROR(ValidateTuple(t));
    if (!seen.insert({t.keep, t.kbits, t.vbits}).second) {
      return absl::InvalidArgumentError(absl::StrCat("tuple ", ToString(t), " appears twice"));
    }
  }
  if (!seen.contains({1.0, 16, 16})) {
    // Workers measure every error relative to it (DESIGN.md section 2).
    return absl::InvalidArgumentError(
        "the tuples must include the reference (keep 1, K 16 bits, V 16 bits)");
  }
  if (spec.seq_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("seq_len ", spec.seq_len, " must be a positive number of tokens"));
  }
  if (shape.max_position_embeddings > 0 && spec.seq_len > shape.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("seq_len ", spec.seq_len, " exceeds the model's max_position_embeddings ",
                     shape.max_position_embeddings));
  }
  if (spec.compression_point == 0) spec.compression_point = spec.seq_len - 256;
  if (spec.compression_point <= 0 || spec.compression_point > spec.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "compression_point ", spec.compression_point, " must be in [1, seq_len=", spec.seq_len,
        "] (the default is seq_len - 256, which needs seq_len > 256)"));
  }
  if (spec.num_samples <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_samples ", spec.num_samples, " must be >= 1"));
  }
  if (spec.samples_per_shard == 0) spec.samples_per_shard = spec.num_samples;
  if (spec.samples_per_shard < 1 || spec.samples_per_shard > spec.num_samples) {
    return absl::InvalidArgumentError(absl::StrCat("samples_per_shard ", spec.samples_per_shard,
                                                   " must be in [1, num_samples=",
                                                   spec.num_samples, "]"));
  }
  if (spec.layers_per_shard == 0) spec.layers_per_shard = shape.num_layers;
  if (spec.layers_per_shard < 1 || spec.layers_per_shard > shape.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layers_per_shard ", spec.layers_per_shard,
                                                   " must be in [1, num_layers=",
                                                   shape.num_layers, "]"));
  }
  // Ceiling divisions and the product without overflow (num_samples may be
  // anything up to 2^63 - 1).
  const int64_t sample_ranges = spec.num_samples / spec.samples_per_shard +
                                (spec.num_samples % spec.samples_per_shard != 0 ? 1 : 0);
  const int64_t layer_ranges = shape.num_layers / spec.layers_per_shard +
                               (shape.num_layers % spec.layers_per_shard != 0 ? 1 : 0);
  if (sample_ranges > options_.max_shards_per_job / layer_ranges) {
    return absl::InvalidArgumentError(absl::StrCat(
        "job would have ", sample_ranges, " sample ranges x ", layer_ranges,
        " layer ranges of shards; at most ", options_.max_shards_per_job,
        " shards are allowed (raise samples_per_shard or layers_per_shard)"));
  }
  Job job;
  job.spec = std::move(spec);
  for (int64_t s = 0; s < sample_ranges; ++s) {
    for (int64_t l = 0; l < layer_ranges; ++l) {
      Shard shard;
      shard.index = job.shards_total();
      shard.sample_begin = s * job.spec.samples_per_shard;
      shard.sample_end = std::min(job.spec.num_samples, shard.sample_begin + job.spec.samples_per_shard);
      shard.layer_begin = l * job.spec.layers_per_shard;
      shard.layer_end = std::min(shape.num_layers, shard.layer_begin + job.spec.layers_per_shard);
      job.shards.push_back(shard);
    }
  }
  return job;
}

absl::StatusOr<Job> Registry::SubmitJob(JobSpec spec) {
  if (!spec.job_id.empty()) MOEND_RETURN_IF_ERROR(ValidateName("job id", spec.job_id));
  absl::MutexLock lock(&mu_);
  const std::string asked_id = spec.job_id;
  auto not_submitting = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return !submitting_.contains(asked_id);
  };
  if (!asked_id.empty()) mu_.Await(absl::Condition(&not_submitting));
  MOEND_ASSIGN_OR_RETURN(Job job, NormalizeJob(std::move(spec)));
  if (!job.spec.job_id.empty()) {
    if (auto it = jobs_.find(job.spec.job_id); it != jobs_.end()) {
      if (it->second.job.spec == job.spec) return it->second.job;
      return absl::AlreadyExistsError(
          absl::StrCat("job '", job.spec.job_id, "' exists with a different spec"));
    }
  } else {
    int64_t n = next_job_number_;
    auto taken = [&](const std::string& id) ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return jobs_.contains(id) || submitting_.contains(id);
    };
    while (taken(absl::StrFormat("job-%06d", n))) ++n;
    job.spec.job_id = absl::StrFormat("job-%06d", n);
  }
  job.sequence = next_job_number_++;
  job.created = clock_->Now();
  const std::string id = job.spec.job_id;
  submitting_.insert(id);
  absl::Status s = WriteUnlocked([&](storage::WriteBatch* batch) {
    batch->Put(Column::kJobs, JobKey(id), records::EncodeJob(job));
    for (const Shard& shard : job.shards) {
      batch->Put(Column::kJobs, ShardKey(id, shard.index), records::EncodeShard(shard));
    }
    return absl::OkStatus();
  });
  submitting_.erase(id);
  if (!s.ok()) {
    // Give the number back unless a later submit took the next one.
    if (next_job_number_ == job.sequence + 1) next_job_number_ = job.sequence;
    return s;
  }
  JobEntry& entry = jobs_[id];
  entry.job = job;
  entry.busy.assign(job.shards.size(), 0);
  ++job_counts_[static_cast<int>(JobState::kPending)];
  SetJobState(entry, JobState::kPending);  // publishes the gauges
  job_order_[job.sequence] = id;
  for (const Shard& shard : entry.job.shards) IndexShard(entry, shard);
  return job;
}

absl::StatusOr<Job> Registry::GetJob(const std::string& job_id) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("no calibration job '", job_id, "'"));
  }
  return it->second.job;
}

std::vector<Job> Registry::ListJobs(const std::string& model) const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<Job> out;
  for (const auto& [sequence, id] : job_order_) {
    const Job& j = jobs_.at(id).job;
    if (model.empty() || j.spec.model == model) out.push_back(j);
  }
  return out;
}

absl::StatusOr<std::optional<Lease>> Registry::LeaseShard(const std::string& worker_id,
                                                          const std::string& job_id,
                                                          const std::string& model) {
  if (worker_id.empty()) return absl::InvalidArgumentError("worker_id is required");
  absl::MutexLock lock(&mu_);
  std::optional<int64_t> sequence;
  if (!job_id.empty()) {
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(absl::StrCat("no calibration job '", job_id, "'"));
    }
    sequence = it->second.job.sequence;
  }
  if (!model.empty() && !models_.contains(model)) {
    return absl::NotFoundError(absl::StrCat("model '", model, "' is not registered"));
  }
  const absl::Time now = clock_->Now();
  leasable_.Expire(now);
  const std::optional<ShardIndex::Ref> ref = leasable_.First(sequence, model);
  if (!ref) return std::optional<Lease>();
  const std::string id = job_order_.at(ref->sequence);
  JobEntry& entry = jobs_.at(id);
  Shard& shard = entry.job.shards[ref->shard];
  Shard leased = shard;
  leased.state = ShardState::kLeased;
  leased.attempts = shard.attempts + 1;
  leased.lease_id = LeaseId(id, shard.index, leased.attempts);
  leased.worker_id = worker_id;
  leased.lease_expiry = now + options_.lease_duration;
  UnindexShard(entry, shard);
  entry.busy[shard.index] = 1;
  absl::Status s = WriteUnlocked([&](storage::WriteBatch* batch) {
    batch->Put(Column::kJobs, ShardKey(id, leased.index), records::EncodeShard(leased));
    return absl::OkStatus();
  });
  entry.busy[shard.index] = 0;
  if (!s.ok()) {
    IndexShard(entry, shard);
    return s;
  }
  if (metrics_) (shard.attempts > 0 ? metrics_->reassigned : metrics_->new_leases).Increment();
  shard = leased;
  IndexShard(entry, shard);
  Lease lease;
  lease.lease_id = leased.lease_id;
  lease.worker_id = worker_id;
  lease.job_id = id;
  lease.shard = leased;
  lease.spec = entry.job.spec;
  lease.shape = models_.at(entry.job.spec.model).info.shape;
  lease.expiry = leased.lease_expiry;
  lease.duration = options_.lease_duration;
  return lease;
}

absl::StatusOr<absl::Time> Registry::Heartbeat(const std::string& lease_id,
                                               const std::string& worker_id) {
  MOEND_ASSIGN_OR_RETURN(LeaseRef ref, ParseLeaseId(lease_id));
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(ref.job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("lease '", lease_id, "' names no known job"));
  }
  JobEntry& entry = it->second;
  if (ref.shard < 0 || ref.shard >= entry.job.shards_total()) {
    return absl::InvalidArgumentError(absl::StrCat("lease '", lease_id, "' names shard ",
                                                   ref.shard, " but job has ",
                                                   entry.job.shards_total()));
  }
  auto idle = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !entry.busy[ref.shard]; };
  mu_.Await(absl::Condition(&idle));
  Shard& shard = entry.job.shards[ref.shard];
  if (shard.state == ShardState::kDone) {
    return absl::FailedPreconditionError(
        absl::StrCat("shard ", ref.shard, " of job ", ref.job_id, " is already done; stop work"));
  }
  if (shard.lease_id != lease_id || shard.worker_id != worker_id) {
    return absl::FailedPreconditionError(
        absl::StrCat("lease '", lease_id, "' of worker '", worker_id,
                     "' was superseded by lease '", shard.lease_id, "' of worker '",
                     shard.worker_id, "'; stop work on this shard"));
  }
  Shard extended = shard;
  extended.lease_expiry = clock_->Now() + options_.lease_duration;
  UnindexShard(entry, shard);
  entry.busy[ref.shard] = 1;
  absl::Status s = WriteUnlocked([&](storage::WriteBatch* batch) {
    batch->Put(Column::kJobs, ShardKey(ref.job_id, ref.shard), records::EncodeShard(extended));
    return absl::OkStatus();
  });
  entry.busy[ref.shard] = 0;
  if (s.ok()) shard = extended;
  IndexShard(entry, shard);
  if (!s.ok()) return s;
  return shard.lease_expiry;
}

absl::Status Registry::ValidateReport(const Job& job, const ShardReport& r,
                                      const absl::Status& values) const {
  const std::string& id = job.spec.job_id;
  if (r.model != job.spec.model) {
    return absl::InvalidArgumentError(absl::StrCat("report is for model '", r.model, "' but job '",
                                                   id, "' calibrates model '", job.spec.model,
                                                   "'"));
  }
  if (r.shard_index < 0 || r.shard_index >= job.shards_total()) {
    return absl::InvalidArgumentError(absl::StrCat("shard index ", r.shard_index,
                                                   " is outside [0, ", job.shards_total(),
                                                   ") of job '", id, "'"));
  }
  if (r.worker_id.empty()) return absl::InvalidArgumentError("worker_id is required");
  const Shard& shard = job.shards[r.shard_index];
  auto ref = ParseLeaseId(r.lease_id);
  if (!ref.ok() || ref->job_id != id || ref->shard != r.shard_index || ref->attempt < 1 ||
      ref->attempt > shard.attempts) {
    return absl::FailedPreconditionError(
        absl::StrCat("lease '", r.lease_id, "' was never issued for shard ", r.shard_index,
                     " of job '", id, "' (", shard.attempts,
                     " leases issued); lease the shard with LeaseShard first"));
  }
  if (ref->attempt == shard.attempts && shard.state != ShardState::kDone &&
      r.worker_id != shard.worker_id) {
    return absl::FailedPreconditionError(absl::StrCat("lease '", r.lease_id, "' is held by worker '",
                                                      shard.worker_id, "', not '", r.worker_id,
                                                      "'"));
  }
  const PartialTable& t = r.table;
  if (t.layer_begin != shard.layer_begin || t.layer_end != shard.layer_end) {
    return absl::InvalidArgumentError(absl::StrCat(
        "report covers layers [", t.layer_begin, ", ", t.layer_end, ") but shard ", shard.index,
        " of job '", id, "' is layers [", shard.layer_begin, ", ", shard.layer_end, ")"));
  }
  if (t.samples != shard.samples()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "report averages ", t.samples, " samples but shard ", shard.index, " has samples [",
        shard.sample_begin, ", ", shard.sample_end, ") = ", shard.samples()));
  }
  if (t.tuples.size() != job.spec.tuples.size()) {
    return absl::InvalidArgumentError(absl::StrCat("report has ", t.tuples.size(),
                                                   " tuples but job '", id, "' measures ",
                                                   job.spec.tuples.size()));
  }
  for (size_t i = 0; i < t.tuples.size(); ++i) {
    if (!(t.tuples[i] == job.spec.tuples[i])) {
      return absl::InvalidArgumentError(absl::StrCat("report tuple ", i, " is ",
                                                     ToString(t.tuples[i]), " but the job's tuple ",
                                                     i, " is ", ToString(job.spec.tuples[i])));
    }
  }
  if (static_cast<int64_t>(t.s.size()) != shard.layers()) {
    return absl::InvalidArgumentError(absl::StrCat("report has ", t.s.size(), " rows for the ",
                                                   shard.layers(), " layers of shard ",
                                                   shard.index));
  }
  if (!t.s_head.empty()) {
    const int64_t heads = models_.at(job.spec.model).info.shape.num_kv_heads;
    if (static_cast<int64_t>(t.s_head.size()) != shard.layers()) {
      return absl::InvalidArgumentError(absl::StrCat("report has per-head rows for ",
                                                     t.s_head.size(), " layers but shard ",
                                                     shard.index, " has ", shard.layers(),
                                                     " (send them for every layer or none)"));
    }
    if (static_cast<int64_t>(t.s_head[0].size()) != heads) {
      return absl::InvalidArgumentError(
          absl::StrCat("report has ", t.s_head[0].size(), " per-head rows per layer but model '",
                       job.spec.model, "' has ", heads, " KV heads"));
    }
  }
  return values;
}

VersionEvent Registry::AddVersion(const SensitivityTable& table, const std::string& run_id,
                                  int64_t shards, storage::WriteBatch* batch,
                                  ModelInfo* model) const {
  const absl::Time now = clock_->Now();
  const uint64_t version = model->version + 1;
  batch->Put(Column::kTables, VersionKey(model->name, version),
             records::EncodeTable({version, run_id, table}));
  model->version = version;
  model->latest_run_id = run_id;
  model->updated = now;
  batch->Put(Column::kModels, model->name, records::EncodeModel(*model));
  batch->Put(Column::kRuns, run_id,
             records::EncodeRun({run_id, model->name, version, table.samples, shards, now}));
  VersionEvent event{model->name, version, run_id, now};
  batch->Put(Column::kFeed, VersionKey(model->name, version), records::EncodeEvent(event));
  return event;
}

void Registry::ApplyVersion(const ModelInfo& model, const VersionEvent& event) {
  models_[model.name].info = model;
  feed_[{event.model, event.version}] = event;
  ++feed_changes_;  // wakes WaitForEvents
}

absl::StatusOr<ReportResult> Registry::ReportShard(const ShardReport& report) {
  const absl::Status values = CheckValues(report.table);
  absl::MutexLock lock(&mu_);
  auto reject = [&](absl::Status s) {
    if (metrics_) metrics_->rejected.Increment();
    return s;
  };
  // Wait until this report may be staged: its shard has no write in
  // flight; and a report that may be the job's last waits for the job's
  // other reports in flight (the merge reads them) and for the model's
  // version reservation.
  JobEntry* entry = nullptr;
  for (;;) {
    auto it = jobs_.find(report.job_id);
    if (it == jobs_.end()) {
      return reject(absl::NotFoundError(absl::StrCat(
          "no calibration job '", report.job_id, "'; report only shards leased with LeaseShard")));
    }
    entry = &it->second;
    const Job& job = entry->job;
    if (absl::Status s = ValidateReport(job, report, values); !s.ok()) return reject(s);
    auto ready = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      if (entry->busy[report.shard_index]) return false;
      if (job.shards[report.shard_index].state == ShardState::kDone) return true;
      if (job.shards_done + entry->reports_in_flight + 1 < job.shards_total()) return true;
      return entry->reports_in_flight == 0 &&
             !models_.at(job.spec.model).version_in_flight;
    };
    if (ready()) break;
    mu_.Await(absl::Condition(&ready));  // then validate again: the shard may have changed
  }
  JobEntry& e = *entry;
  Job& job = e.job;
  const std::string id = job.spec.job_id;
  Shard& shard = job.shards[report.shard_index];
  ReportResult result;
  result.shards_total = job.shards_total();
  if (shard.state == ShardState::kDone) {
    if (metrics_) metrics_->duplicate.Increment();
    result.duplicate = true;
    result.shards_done = job.shards_done;
    result.job_done = job.state == JobState::kDone;
    result.model_version = models_.at(job.spec.model).info.version;
    return result;
  }

  // Stage: the shard's new state, and for the job's last report what the
  // merge needs, while holding the reservations.
  Shard done_shard = shard;
  done_shard.state = ShardState::kDone;
  done_shard.lease_id = report.lease_id;
  done_shard.worker_id = report.worker_id;
  const bool complete = job.shards_done + 1 == job.shards_total();
  ModelEntry& model_entry = models_.at(job.spec.model);
  ModelInfo model = model_entry.info;
  Job completed;  // the job record of a completed job
  std::vector<ShardResult> parts;
  if (complete) {
    completed = job;
    completed.state = JobState::kDone;
    parts.reserve(job.shards.size());
    for (const Shard& s : job.shards) parts.push_back({s.sample_begin, s.sample_end, {}});
    model_entry.version_in_flight = true;
  }
  UnindexShard(e, shard);
  e.busy[shard.index] = 1;
  ++e.reports_in_flight;

  std::optional<VersionEvent> event;
  absl::Status s = WriteUnlocked([&](storage::WriteBatch* batch) -> absl::Status {
    batch->Put(Column::kJobs, ReportKey(id, done_shard.index),
               records::EncodePartialTable(report.table));
    batch->Put(Column::kJobs, ShardKey(id, done_shard.index), records::EncodeShard(done_shard));
    if (!complete) return absl::OkStatus();
    // Every other shard is done and its report stored; none changes now.
    for (size_t i = 0; i < parts.size(); ++i) {
      if (static_cast<int64_t>(i) == done_shard.index) {
        parts[i].table = report.table;
        continue;
      }
      const std::string key = ReportKey(id, static_cast<int64_t>(i));
      MOEND_ASSIGN_OR_RETURN(std::string bytes, store_->Get(Column::kJobs, key));
      MOEND_ASSIGN_OR_RETURN(parts[i].table, records::DecodePartialTable(bytes, key));
    }
    MOEND_ASSIGN_OR_RETURN(SensitivityTable merged,
                           MergePartialTables(completed.spec, model.shape, parts));
    event = AddVersion(merged, id, completed.shards_total(), batch, &model);
    completed.table_version = model.version;
    completed.completed = event->time;
    batch->Put(Column::kJobs, JobKey(id), records::EncodeJob(completed));
    return absl::OkStatus();
  });
  e.busy[shard.index] = 0;
  --e.reports_in_flight;
  if (complete) model_entry.version_in_flight = false;
  if (!s.ok()) {
    IndexShard(e, shard);
    return s;
  }
  shard = done_shard;
  ++job.shards_done;
  SetJobState(e, complete ? JobState::kDone : JobState::kRunning);
  if (complete) {
    job.table_version = completed.table_version;
    job.completed = completed.completed;
    ApplyVersion(model, *event);
  }
  if (metrics_) metrics_->accepted.Increment();
  result.shards_done = job.shards_done;
  result.job_done = complete;
  result.model_version = models_.at(job.spec.model).info.version;
  return result;
}

absl::StatusOr<uint64_t> Registry::PublishTable(const SensitivityTable& table) {
  MOEND_RETURN_IF_ERROR(table.Validate());
  absl::MutexLock lock(&mu_);
  auto it = models_.find(table.model);
  if (it == models_.end()) {
    return absl::NotFoundError(absl::StrCat("model '", table.model, "' is not registered"));
  }
  ModelEntry& entry = it->second;
  const ModelShape& shape = entry.info.shape;
  if (table.num_layers != shape.num_layers || table.num_kv_heads != shape.num_kv_heads ||
      table.head_dim != shape.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "table shape (", table.num_layers, " layers, ", table.num_kv_heads, " KV heads, head dim ",
        table.head_dim, ") does not match model '", table.model, "' (", shape.num_layers,
        " layers, ", shape.num_kv_heads, " KV heads, head dim ", shape.head_dim, ")"));
  }
  auto free = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !entry.version_in_flight; };
  mu_.Await(absl::Condition(&free));
  ModelInfo model = entry.info;
  const std::string run_id = absl::StrCat("publish-", model.name, "-", model.version + 1);
  entry.version_in_flight = true;
  VersionEvent event;
  absl::Status s = WriteUnlocked([&](storage::WriteBatch* batch) {
    event = AddVersion(table, run_id, 0, batch, &model);
    return absl::OkStatus();
  });
  entry.version_in_flight = false;
  if (!s.ok()) return s;
  ApplyVersion(model, event);
  return event.version;
}

absl::StatusOr<VersionedTable> Registry::GetTable(const std::string& model,
                                                  uint64_t version) const {
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = models_.find(model);
    if (it == models_.end()) {
      return absl::NotFoundError(absl::StrCat("model '", model, "' is not registered"));
    }
    const uint64_t latest = it->second.info.version;
    if (latest == 0) {
      return absl::NotFoundError(absl::StrCat(
          "model '", model, "' has no sensitivity table yet; run a calibration job or publish one"));
    }
    if (version == 0) version = latest;
    if (version > latest) {
      return absl::NotFoundError(absl::StrCat("model '", model, "' has no table version ", version,
                                              "; the latest is ", latest));
    }
  }
  // Table records are never rewritten: read without the mutex.
  const std::string key = VersionKey(model, version);
  MOEND_ASSIGN_OR_RETURN(std::string bytes, store_->Get(Column::kTables, key));
  return records::DecodeTable(bytes, "tables/" + key);
}

std::vector<VersionEvent> Registry::EventsAfterLocked(
    const std::string& model, uint64_t after_version,
    const std::map<std::string, uint64_t>& after) const {
  std::vector<VersionEvent> out;
  auto begin = model.empty() ? feed_.begin() : feed_.lower_bound({model, 0});
  for (auto it = begin; it != feed_.end(); ++it) {
    const VersionEvent& e = it->second;
    if (!model.empty() && e.model != model) break;
    auto a = after.find(e.model);
    uint64_t seen = a == after.end() ? after_version : a->second;
    if (e.version > seen) out.push_back(e);
  }
  return out;
}

std::vector<VersionEvent> Registry::EventsAfter(
    const std::string& model, uint64_t after_version,
    const std::map<std::string, uint64_t>& after) const {
  absl::ReaderMutexLock lock(&mu_);
  return EventsAfterLocked(model, after_version, after);
}

absl::StatusOr<std::vector<VersionEvent>> Registry::WaitForEvents(
    const std::string& model, uint64_t after_version,
    const std::map<std::string, uint64_t>& after, absl::Time deadline) const {
  absl::ReaderMutexLock lock(&mu_);
  while (true) {
    if (shutdown_) return absl::CancelledError("registry is shutting down");
    std::vector<VersionEvent> events = EventsAfterLocked(model, after_version, after);
    if (!events.empty()) return events;
    const uint64_t seen = feed_changes_;
    auto changed = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return shutdown_ || feed_changes_ != seen;
    };
    if (!mu_.AwaitWithDeadline(absl::Condition(&changed), deadline)) return events;  // empty
  }
}

void Registry::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
}

}  // namespace moend::registry

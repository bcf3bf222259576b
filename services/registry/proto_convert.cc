#include "services/registry/proto_convert.h"

namespace moend::registry {
namespace {

int64_t Micros(absl::Time t) { return absl::ToUnixMicros(t); }
absl::Time FromMicros(int64_t us) { return absl::FromUnixMicros(us); }

v1::JobState JobStateToProto(JobState s) {
  switch (s) {
    case JobState::kPending: return v1::JOB_STATE_PENDING;
    case JobState::kRunning: return v1::JOB_STATE_RUNNING;
    case JobState::kDone: return v1::JOB_STATE_DONE;
  }
  return v1::JOB_STATE_UNSPECIFIED;
}
JobState JobStateFromProto(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_RUNNING: return JobState::kRunning;
    case v1::JOB_STATE_DONE: return JobState::kDone;
    default: return JobState::kPending;
  }
}
v1::ShardState ShardStateToProto(ShardState s) {
  switch (s) {
    case ShardState::kPending: return v1::SHARD_STATE_PENDING;
    case ShardState::kLeased: return v1::SHARD_STATE_LEASED;
    case ShardState::kDone: return v1::SHARD_STATE_DONE;
  }
  return v1::SHARD_STATE_UNSPECIFIED;
}
ShardState ShardStateFromProto(v1::ShardState s) {
  switch (s) {
    case v1::SHARD_STATE_LEASED: return ShardState::kLeased;
    case v1::SHARD_STATE_DONE: return ShardState::kDone;
    default: return ShardState::kPending;
  }
}

template <typename Rows>
std::vector<std::vector<double>> RowsFromProto(const Rows& rows) {
  std::vector<std::vector<double>> out;
  out.reserve(rows.size());
  for (const v1::SensitivityRow& r : rows) out.emplace_back(r.s().begin(), r.s().end());
  return out;
}
template <typename Rows>
void RowsToProto(const std::vector<std::vector<double>>& s, Rows* rows) {
  rows->Reserve(static_cast<int>(s.size()));
  for (const std::vector<double>& r : s) {
    v1::SensitivityRow* row = rows->Add();
    row->mutable_s()->Add(r.begin(), r.end());
  }
}
template <typename Tuples>
std::vector<CompressionTuple> TuplesFromProto(const Tuples& tuples) {
  std::vector<CompressionTuple> out;
  out.reserve(tuples.size());
  for (const v1::CompressionTuple& t : tuples) out.push_back(FromProto(t));
  return out;
}
template <typename Tuples>
void TuplesToProto(const std::vector<CompressionTuple>& tuples, Tuples* out) {
  for (const CompressionTuple& t : tuples) *out->Add() = ToProto(t);
}

}  // namespace

const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kPending: return "pending";
    case JobState::kRunning: return "running";
    case JobState::kDone: return "done";
  }
  return "unknown";
}

v1::CompressionTuple ToProto(const CompressionTuple& t) {
  v1::CompressionTuple p;
  p.set_keep(t.keep);
  p.set_kbits(t.kbits);
  p.set_vbits(t.vbits);
  return p;
}
CompressionTuple FromProto(const v1::CompressionTuple& p) {
  return {p.keep(), p.kbits(), p.vbits()};
}

v1::SensitivityTable ToProto(const SensitivityTable& t) {
  v1::SensitivityTable p;
  p.set_model(t.model);
  p.set_num_layers(t.num_layers);
  p.set_num_kv_heads(t.num_kv_heads);
  p.set_head_dim(t.head_dim);
  p.set_seq_len(t.seq_len);
  p.set_compression_point(t.compression_point);
  p.set_samples(t.samples);
  TuplesToProto(t.tuples, p.mutable_tuples());
  RowsToProto(t.s, p.mutable_s());
  return p;
}
SensitivityTable FromProto(const v1::SensitivityTable& p) {
  SensitivityTable t;
  t.model = p.model();
  t.num_layers = p.num_layers();
  t.num_kv_heads = p.num_kv_heads();
  t.head_dim = p.head_dim();
  t.seq_len = p.seq_len();
  t.compression_point = p.compression_point();
  t.samples = p.samples();
  t.tuples = TuplesFromProto(p.tuples());
  t.s = RowsFromProto(p.s());
  return t;
}

v1::ModelShape ToProto(const ModelShape& s) {
  v1::ModelShape p;
  p.set_architecture(s.architecture);
  p.set_model_type(s.model_type);
  p.set_num_layers(s.num_layers);
  p.set_num_attention_heads(s.num_attention_heads);
  p.set_num_kv_heads(s.num_kv_heads);
  p.set_head_dim(s.head_dim);
  p.set_hidden_size(s.hidden_size);
  p.set_intermediate_size(s.intermediate_size);
  p.set_vocab_size(s.vocab_size);
  p.set_max_position_embeddings(s.max_position_embeddings);
  return p;
}
ModelShape FromProto(const v1::ModelShape& p) {
  ModelShape s;
  s.architecture = p.architecture();
  s.model_type = p.model_type();
  s.num_layers = p.num_layers();
  s.num_attention_heads = p.num_attention_heads();
  s.num_kv_heads = p.num_kv_heads();
  s.head_dim = p.head_dim();
  s.hidden_size = p.hidden_size();
  s.intermediate_size = p.intermediate_size();
  s.vocab_size = p.vocab_size();
  s.max_position_embeddings = p.max_position_embeddings();
  return s;
}

v1::Model ToProto(const ModelInfo& m) {
  v1::Model p;
  p.set_name(m.name);
  *p.mutable_shape() = ToProto(m.shape);
  p.set_config_json(m.config_json);
  p.set_version(m.version);
  p.set_latest_run_id(m.latest_run_id);
  p.set_created_unix_micros(Micros(m.created));
  p.set_updated_unix_micros(Micros(m.updated));
  return p;
}
ModelInfo FromProto(const v1::Model& p) {
  ModelInfo m;
  m.name = p.name();
  m.shape = FromProto(p.shape());
  m.config_json = p.config_json();
  m.version = p.version();
  m.latest_run_id = p.latest_run_id();
  m.created = FromMicros(p.created_unix_micros());
  m.updated = FromMicros(p.updated_unix_micros());
  return m;
}

v1::JobSpec ToProto(const JobSpec& s) {
  v1::JobSpec p;
  p.set_job_id(s.job_id);
  p.set_model(s.model);
  TuplesToProto(s.tuples, p.mutable_tuples());
  p.set_seq_len(s.seq_len);
  p.set_compression_point(s.compression_point);
  p.set_num_samples(s.num_samples);
  p.set_samples_per_shard(s.samples_per_shard);
  p.set_layers_per_shard(s.layers_per_shard);
  p.set_dataset(s.dataset);
  return p;
}
JobSpec FromProto(const v1::JobSpec& p) {
  JobSpec s;
  s.job_id = p.job_id();
  s.model = p.model();
  s.tuples = TuplesFromProto(p.tuples());
  s.seq_len = p.seq_len();
  s.compression_point = p.compression_point();
  s.num_samples = p.num_samples();
  s.samples_per_shard = p.samples_per_shard();
  s.layers_per_shard = p.layers_per_shard();
  s.dataset = p.dataset();
  return s;
}

v1::Shard ToProto(const Shard& s) {
  v1::Shard p;
  p.set_index(s.index);
  p.set_sample_begin(s.sample_begin);
  p.set_sample_end(s.sample_end);
  p.set_layer_begin(s.layer_begin);
  p.set_layer_end(s.layer_end);
  p.set_state(ShardStateToProto(s.state));
  p.set_lease_id(s.lease_id);
  p.set_worker_id(s.worker_id);
  p.set_lease_expiry_unix_micros(Micros(s.lease_expiry));
  p.set_attempts(s.attempts);
  return p;
}
Shard FromProto(const v1::Shard& p) {
  Shard s;
  s.index = p.index();
  s.sample_begin = p.sample_begin();
  s.sample_end = p.sample_end();
  s.layer_begin = p.layer_begin();
  s.layer_end = p.layer_end();
  s.state = ShardStateFromProto(p.state());
  s.lease_id = p.lease_id();
  s.worker_id = p.worker_id();
  s.lease_expiry = FromMicros(p.lease_expiry_unix_micros());
  s.attempts = p.attempts();
  return s;
}

v1::CalibrationJob ToProto(const Job& j, bool include_shards) {
  v1::CalibrationJob p;
  *p.mutable_spec() = ToProto(j.spec);
  p.set_state(JobStateToProto(j.state));
  p.set_shards_total(j.shards_total());
  p.set_shards_done(j.shards_done);
  if (include_shards) {
    for (const Shard& s : j.shards) *p.add_shards() = ToProto(s);
  }
  p.set_table_version(j.table_version);
  p.set_created_unix_micros(Micros(j.created));
  p.set_completed_unix_micros(Micros(j.completed));
  p.set_sequence(j.sequence);
  return p;
}
Job FromProto(const v1::CalibrationJob& p) {
  Job j;
  j.spec = FromProto(p.spec());
  j.state = JobStateFromProto(p.state());
  j.shards_done = p.shards_done();
  for (const v1::Shard& s : p.shards()) j.shards.push_back(FromProto(s));
  j.table_version = p.table_version();
  j.created = FromMicros(p.created_unix_micros());
  j.completed = FromMicros(p.completed_unix_micros());
  j.sequence = p.sequence();
  return j;
}

v1::Lease ToProto(const Lease& l) {
  v1::Lease p;
  p.set_lease_id(l.lease_id);
  p.set_worker_id(l.worker_id);
  p.set_job_id(l.job_id);
  *p.mutable_shard() = ToProto(l.shard);
  *p.mutable_spec() = ToProto(l.spec);
  *p.mutable_shape() = ToProto(l.shape);
  p.set_expiry_unix_micros(Micros(l.expiry));
  p.set_lease_duration_ms(absl::ToInt64Milliseconds(l.duration));
  return p;
}
Lease FromProto(const v1::Lease& p) {
  Lease l;
  l.lease_id = p.lease_id();
  l.worker_id = p.worker_id();
  l.job_id = p.job_id();
  l.shard = FromProto(p.shard());
  l.spec = FromProto(p.spec());
  l.shape = FromProto(p.shape());
  l.expiry = FromMicros(p.expiry_unix_micros());
  l.duration = absl::Milliseconds(p.lease_duration_ms());
  return l;
}

v1::PartialTable ToProto(const PartialTable& t) {
  v1::PartialTable p;
  p.set_layer_begin(t.layer_begin);
  p.set_layer_end(t.layer_end);
  p.set_samples(t.samples);
  TuplesToProto(t.tuples, p.mutable_tuples());
  RowsToProto(t.s, p.mutable_rows());
  return p;
}
PartialTable FromProto(const v1::PartialTable& p) {
  PartialTable t;
  t.layer_begin = p.layer_begin();
  t.layer_end = p.layer_end();
  t.samples = p.samples();
  t.tuples = TuplesFromProto(p.tuples());
  t.s = RowsFromProto(p.rows());
  return t;
}

v1::ReportShardRequest ToProto(const ShardReport& r) {
  v1::ReportShardRequest p;
  p.set_lease_id(r.lease_id);
  p.set_worker_id(r.worker_id);
  p.set_job_id(r.job_id);
  p.set_shard_index(r.shard_index);
  p.set_model(r.model);
  *p.mutable_table() = ToProto(r.table);
  return p;
}
ShardReport FromProto(const v1::ReportShardRequest& p) {
  ShardReport r;
  r.lease_id = p.lease_id();
  r.worker_id = p.worker_id();
  r.job_id = p.job_id();
  r.shard_index = p.shard_index();
  r.model = p.model();
  r.table = FromProto(p.table());
  return r;
}

v1::ReportShardResponse ToProto(const ReportResult& r) {
  v1::ReportShardResponse p;
  p.set_duplicate(r.duplicate);
  p.set_job_done(r.job_done);
  p.set_shards_done(r.shards_done);
  p.set_shards_total(r.shards_total);
  p.set_model_version(r.model_version);
  return p;
}
ReportResult FromProto(const v1::ReportShardResponse& p) {
  return {p.duplicate(), p.job_done(), p.shards_done(), p.shards_total(), p.model_version()};
}

v1::GetTableResponse ToProto(const VersionedTable& t) {
  v1::GetTableResponse p;
  p.set_version(t.version);
  p.set_run_id(t.run_id);
  *p.mutable_table() = ToProto(t.table);
  return p;
}
VersionedTable FromProto(const v1::GetTableResponse& p) {
  return {p.version(), p.run_id(), FromProto(p.table())};
}

v1::ModelVersionEvent ToProto(const VersionEvent& e) {
  v1::ModelVersionEvent p;
  p.set_model(e.model);
  p.set_version(e.version);
  p.set_run_id(e.run_id);
  p.set_unix_micros(Micros(e.time));
  return p;
}
VersionEvent FromProto(const v1::ModelVersionEvent& p) {
  return {p.model(), p.version(), p.run_id(), FromMicros(p.unix_micros())};
}

}  // namespace moend::registry

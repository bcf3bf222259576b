// Plain C++ records of the registry's domain: models, calibration jobs and
// their shards, leases, shard reports, calibration runs and change-feed
// events. The gRPC adapter and the client convert these to and from moend.v1
// messages (proto_convert.h); the registry stores them as the records of
// records.h. Both copy fields by name (message_fields.h).
#ifndef MOEND_SERVICES_REGISTRY_REGISTRY_TYPES_H_
#define MOEND_SERVICES_REGISTRY_REGISTRY_TYPES_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "core/compression.h"
#include "core/sensitivity_table.h"

namespace moend::registry {

// The architecture shape of a model (from its Hugging Face config.json).
struct ModelShape {
  std::string architecture;  // "LlamaForCausalLM"
  std::string model_type;    // "llama"
  int64_t num_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;  // 0 = unknown

  friend bool operator==(const ModelShape&, const ModelShape&) = default;
};

struct ModelInfo {
  std::string name;
  ModelShape shape;
  std::string config_json;
  uint64_t version = 0;  // newest table version; 0 = no table yet
  std::string latest_run_id;
  absl::Time created = absl::UnixEpoch();
  absl::Time updated = absl::UnixEpoch();
};

// What a calibration job measures; zeros mean "the default" as documented.
struct JobSpec {
  std::string job_id;                    // empty = the registry assigns "job-000001", ...
  std::string model;                     // registered model name
  std::vector<CompressionTuple> tuples;  // empty = TupleGrid::Default()
  int64_t seq_len = 0;                   // tokens per calibration sequence, >= 1
  int64_t compression_point = 0;         // 0 = seq_len - 256
  int64_t num_samples = 0;               // sequences, >= 1
  int64_t samples_per_shard = 0;         // 0 = num_samples
  int64_t layers_per_shard = 0;          // 0 = the model's num_layers
  std::string dataset;                   // where workers read samples

  friend bool operator==(const JobSpec&, const JobSpec&) = default;
};

enum class JobState { kPending, kRunning, kDone };
enum class ShardState { kPending, kLeased, kDone };

// One unit of work: sample range x layer range, both half-open.
struct Shard {
  int64_t index = 0;
  int64_t sample_begin = 0;
  int64_t sample_end = 0;
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
  // kLeased with lease_expiry <= now means the lease lapsed: the shard is
  // available to the next LeaseShard.
  ShardState state = ShardState::kPending;
  std::string lease_id;  // current (or last) lease
  std::string worker_id;
  absl::Time lease_expiry = absl::UnixEpoch();
  int64_t attempts = 0;  // leases issued for this shard so far
  int64_t samples() const { return sample_end - sample_begin; }
  int64_t layers() const { return layer_end - layer_begin; }
};

struct Job {
  JobSpec spec;  // defaults filled in
  JobState state = JobState::kPending;
  int64_t shards_done = 0;
  std::vector<Shard> shards;
  uint64_t table_version = 0;  // model version the merged table became (kDone)
  absl::Time created = absl::UnixEpoch();
  absl::Time completed = absl::UnixEpoch();
  int64_t sequence = 0;  // submission order, 1, 2, ...
  int64_t shards_total() const { return static_cast<int64_t>(shards.size()); }
};

// The right to compute one shard until `expiry`; heartbeat to extend it.
struct Lease {
  std::string lease_id;  // "<job_id>/<shard index>/<attempt>"
  std::string worker_id;
  std::string job_id;
  Shard shard;
  JobSpec spec;
  ModelShape shape;
  absl::Time expiry = absl::UnixEpoch();
  absl::Duration duration = absl::ZeroDuration();
};

// Sensitivities of one shard: its layers, averaged over its samples.
struct PartialTable {
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
  int64_t samples = 0;                   // = shard's sample_end - sample_begin
  std::vector<CompressionTuple> tuples;  // = the job's tuples, same order
  std::vector<std::vector<double>> s;    // [layer_end - layer_begin][tuples.size()]
  // Per-head rows: empty (a worker that measures only layers), or
  // [layer_end - layer_begin][num_kv_heads of the model][tuples.size()].
  std::vector<std::vector<std::vector<double>>> s_head;
};

struct ShardReport {
  std::string lease_id;
  std::string worker_id;
  std::string job_id;
  int64_t shard_index = 0;
  std::string model;
  PartialTable table;
};

// The report of `lease` with the shard's rows s [layers of the shard][tuples
// of the job] (each averaged over the shard's samples), and optionally its
// per-head rows s_head [layers of the shard][KV heads][tuples].
inline ShardReport ReportOf(const Lease& lease, std::vector<std::vector<double>> s,
                            std::vector<std::vector<std::vector<double>>> s_head = {}) {
  ShardReport r;
  r.lease_id = lease.lease_id;
  r.worker_id = lease.worker_id;
  r.job_id = lease.job_id;
  r.shard_index = lease.shard.index;
  r.model = lease.spec.model;
  r.table.layer_begin = lease.shard.layer_begin;
  r.table.layer_end = lease.shard.layer_end;
  r.table.samples = lease.shard.samples();
  r.table.tuples = lease.spec.tuples;
  r.table.s = std::move(s);
  r.table.s_head = std::move(s_head);
  return r;
}

struct ReportResult {
  bool duplicate = false;  // the shard was already done; nothing changed
  bool job_done = false;
  int64_t shards_done = 0;
  int64_t shards_total = 0;
  uint64_t model_version = 0;  // the model's version after this report
};

// A completed calibration: which job (or publish) made which table version.
struct CalibrationRun {
  std::string run_id;  // the job id, or "publish-<model>-<version>"
  std::string model;
  uint64_t version = 0;
  int64_t samples = 0;
  int64_t shards = 0;  // 0 for a published table
  absl::Time completed = absl::UnixEpoch();
};

struct VersionedTable {
  uint64_t version = 0;
  std::string run_id;
  SensitivityTable table;
};

// A change-feed entry: `model` got table `version`.
struct VersionEvent {
  std::string model;
  uint64_t version = 0;
  std::string run_id;
  absl::Time time = absl::UnixEpoch();
};

}  // namespace moend::registry

#endif  // MOEND_SERVICES_REGISTRY_REGISTRY_TYPES_H_

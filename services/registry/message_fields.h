// Copying the registry's domain structs (registry_types.h) to and from
// protobuf messages that name their fields alike: the wire messages
// (moend.v1, proto_convert.cc) and the database records (moend.storage.v1,
// records.cc). Each struct's fields are listed once below; ToMessage and
// FromMessage are templates over the message type, so both protocols share
// one list and a field renamed in one of them fails to compile rather than
// being silently skipped. What only one protocol has (the wire's
// shards_done, the lease duration in ms, ...) its own .cc copies by hand.
//
// Included only by proto_convert.cc and records.cc; the macros stay local
// to this header's users (they are #undef'd at the end).
#ifndef MOEND_SERVICES_REGISTRY_MESSAGE_FIELDS_H_
#define MOEND_SERVICES_REGISTRY_MESSAGE_FIELDS_H_

#include <string>
#include <type_traits>
#include <vector>

#include "absl/time/time.h"
#include "core/sensitivity_table.h"
#include "services/registry/registry_types.h"

namespace moend::registry::fields {

// The messages number states from 1 (0 = unspecified): the domain value + 1.
// An unknown or unspecified number reads as the first state (pending).
template <typename Enum>
Enum StateFromNumber(int n) {
  return n >= 2 && n <= 3 ? static_cast<Enum>(n - 1) : static_cast<Enum>(0);
}

// Kinds of field, one macro parameter each in the lists below:
//   F(name)          scalar or string, the same name in both
//   T(name, micros)  absl::Time <-> int64 Unix microseconds
//   N(name)          a nested struct <-> a nested message
//   R(name)          a vector of structs <-> a repeated message
//   S(name, rows)    rows of doubles <-> repeated SensitivityRow {repeated double s}
//   H(name, rows)    [layer][head] rows of doubles <-> repeated SensitivityHeadRows
//                    {repeated SensitivityRow heads}
//   L(name)          a vector of strings <-> a repeated string
//   E(name)          a state enum <-> a message enum
#define MOEND_TUPLE_FIELDS(F, T, N, R, S, H, L, E) F(keep) F(kbits) F(vbits)
#define MOEND_TABLE_FIELDS(F, T, N, R, S, H, L, E)                                            \
  F(model) F(num_layers) F(num_kv_heads) F(head_dim) F(seq_len) F(compression_point)          \
  F(samples) R(tuples) S(s, s) H(s_head, s_head) L(signals)
#define MOEND_SHAPE_FIELDS(F, T, N, R, S, H, L, E)                                            \
  F(architecture) F(model_type) F(num_layers) F(num_attention_heads) F(num_kv_heads)          \
  F(head_dim) F(hidden_size) F(intermediate_size) F(vocab_size) F(max_position_embeddings)
#define MOEND_MODEL_FIELDS(F, T, N, R, S, H, L, E)                                            \
  F(name) N(shape) F(config_json) F(version) F(latest_run_id)                                 \
  T(created, created_unix_micros) T(updated, updated_unix_micros)
#define MOEND_SPEC_FIELDS(F, T, N, R, S, H, L, E)                                             \
  F(job_id) F(model) R(tuples) F(seq_len) F(compression_point) F(num_samples)                 \
  F(samples_per_shard) F(layers_per_shard) F(dataset)
#define MOEND_SHARD_FIELDS(F, T, N, R, S, H, L, E)                                            \
  F(index) F(sample_begin) F(sample_end) F(layer_begin) F(layer_end) E(state) F(lease_id)     \
  F(worker_id) T(lease_expiry, lease_expiry_unix_micros) F(attempts)
// Job: shards_total is a count of `shards`; shards_done and the shards
// themselves are the wire's only (the database derives and keys them).
#define MOEND_JOB_FIELDS(F, T, N, R, S, H, L, E)                                              \
  N(spec) E(state) F(table_version) T(created, created_unix_micros)                           \
  T(completed, completed_unix_micros) F(sequence)
#define MOEND_PARTIAL_TABLE_FIELDS(F, T, N, R, S, H, L, E)                                    \
  F(layer_begin) F(layer_end) F(samples) R(tuples) S(s, rows) H(s_head, head_rows)
#define MOEND_VERSIONED_TABLE_FIELDS(F, T, N, R, S, H, L, E) F(version) F(run_id) N(table)
#define MOEND_EVENT_FIELDS(F, T, N, R, S, H, L, E) \
  F(model) F(version) F(run_id) T(time, unix_micros)
#define MOEND_RUN_FIELDS(F, T, N, R, S, H, L, E)                                              \
  F(run_id) F(model) F(version) F(samples) F(shards) T(completed, completed_unix_micros)
// Wire only. Lease: the duration travels in milliseconds, copied by hand.
#define MOEND_LEASE_FIELDS(F, T, N, R, S, H, L, E)                                            \
  F(lease_id) F(worker_id) F(job_id) N(shard) N(spec) N(shape) T(expiry, expiry_unix_micros)
#define MOEND_REPORT_FIELDS(F, T, N, R, S, H, L, E)                                           \
  F(lease_id) F(worker_id) F(job_id) F(shard_index) F(model) N(table)
#define MOEND_REPORT_RESULT_FIELDS(F, T, N, R, S, H, L, E)                                    \
  F(duplicate) F(job_done) F(shards_done) F(shards_total) F(model_version)

#define MOEND_TO_F(f) m->set_##f(v.f);
#define MOEND_TO_T(f, micros) m->set_##micros(absl::ToUnixMicros(v.f));
#define MOEND_TO_N(f) ToMessage(v.f, m->mutable_##f());
#define MOEND_TO_R(f) \
  for (const auto& e : v.f) ToMessage(e, m->add_##f());
#define MOEND_TO_S(f, rows)                    \
  for (const std::vector<double>& row : v.f) { \
    m->add_##rows()->mutable_s()->Add(row.begin(), row.end()); \
  }
#define MOEND_TO_H(f, rows)                                              \
  for (const std::vector<std::vector<double>>& layer : v.f) {             \
    auto* heads = m->add_##rows();                                        \
    for (const std::vector<double>& row : layer) {                        \
      heads->add_heads()->mutable_s()->Add(row.begin(), row.end());       \
    }                                                                     \
  }
#define MOEND_TO_L(f) \
  for (const std::string& e : v.f) m->add_##f(e);
#define MOEND_TO_E(f) \
  m->set_##f(static_cast<std::remove_cvref_t<decltype(m->f())>>(static_cast<int>(v.f) + 1));

#define MOEND_FROM_F(f) v->f = m.f();
#define MOEND_FROM_T(f, micros) v->f = absl::FromUnixMicros(m.micros());
#define MOEND_FROM_N(f) FromMessage(m.f(), &v->f);
#define MOEND_FROM_R(f)                              \
  v->f.clear();                                      \
  v->f.reserve(m.f().size());                        \
  for (const auto& e : m.f()) FromMessage(e, &v->f.emplace_back());
#define MOEND_FROM_S(f, rows)                        \
  v->f.clear();                                      \
  v->f.reserve(m.rows().size());                     \
  for (const auto& row : m.rows()) v->f.emplace_back(row.s().begin(), row.s().end());
#define MOEND_FROM_H(f, rows)                                          \
  v->f.clear();                                                         \
  v->f.reserve(m.rows().size());                                        \
  for (const auto& layer : m.rows()) {                                  \
    auto& heads = v->f.emplace_back();                                  \
    heads.reserve(layer.heads().size());                                \
    for (const auto& row : layer.heads()) heads.emplace_back(row.s().begin(), row.s().end()); \
  }
#define MOEND_FROM_L(f) v->f.assign(m.f().begin(), m.f().end());
#define MOEND_FROM_E(f) v->f = StateFromNumber<decltype(v->f)>(static_cast<int>(m.f()));

#define MOEND_DEFINE_COPY(Type, FIELDS)                                                        \
  template <typename M>                                                                        \
  void ToMessage(const Type& v, M* m) {                                                        \
    FIELDS(MOEND_TO_F, MOEND_TO_T, MOEND_TO_N, MOEND_TO_R, MOEND_TO_S, MOEND_TO_H, MOEND_TO_L, \
           MOEND_TO_E)                                                                         \
  }                                                                                            \
  template <typename M>                                                                        \
  void FromMessage(const M& m, Type* v) {                                                      \
    FIELDS(MOEND_FROM_F, MOEND_FROM_T, MOEND_FROM_N, MOEND_FROM_R, MOEND_FROM_S, MOEND_FROM_H, \
           MOEND_FROM_L, MOEND_FROM_E)                                                         \
  }

// Declared first so that the nested copies below find each other.
#define MOEND_DECLARE_COPY(Type)                  \
  template <typename M>                           \
  void ToMessage(const Type& v, M* m);            \
  template <typename M>                           \
  void FromMessage(const M& m, Type* v);
MOEND_DECLARE_COPY(CompressionTuple)
MOEND_DECLARE_COPY(SensitivityTable)
MOEND_DECLARE_COPY(ModelShape)
MOEND_DECLARE_COPY(JobSpec)
MOEND_DECLARE_COPY(Shard)
MOEND_DECLARE_COPY(PartialTable)

MOEND_DEFINE_COPY(CompressionTuple, MOEND_TUPLE_FIELDS)
MOEND_DEFINE_COPY(SensitivityTable, MOEND_TABLE_FIELDS)
MOEND_DEFINE_COPY(ModelShape, MOEND_SHAPE_FIELDS)
MOEND_DEFINE_COPY(ModelInfo, MOEND_MODEL_FIELDS)
MOEND_DEFINE_COPY(JobSpec, MOEND_SPEC_FIELDS)
MOEND_DEFINE_COPY(Shard, MOEND_SHARD_FIELDS)
MOEND_DEFINE_COPY(Job, MOEND_JOB_FIELDS)
MOEND_DEFINE_COPY(PartialTable, MOEND_PARTIAL_TABLE_FIELDS)
MOEND_DEFINE_COPY(VersionedTable, MOEND_VERSIONED_TABLE_FIELDS)
MOEND_DEFINE_COPY(VersionEvent, MOEND_EVENT_FIELDS)
MOEND_DEFINE_COPY(CalibrationRun, MOEND_RUN_FIELDS)
MOEND_DEFINE_COPY(Lease, MOEND_LEASE_FIELDS)
MOEND_DEFINE_COPY(ShardReport, MOEND_REPORT_FIELDS)
MOEND_DEFINE_COPY(ReportResult, MOEND_REPORT_RESULT_FIELDS)

// The same, returning the struct or the message.
template <typename T, typename M>
T From(const M& m) {
  T v;
  FromMessage(m, &v);
  return v;
}
template <typename M, typename T>
M To(const T& v) {
  M m;
  ToMessage(v, &m);
  return m;
}

#undef MOEND_DECLARE_COPY
#undef MOEND_DEFINE_COPY
#undef MOEND_FROM_E
#undef MOEND_FROM_L
#undef MOEND_FROM_H
#undef MOEND_FROM_S
#undef MOEND_FROM_R
#undef MOEND_FROM_N
#undef MOEND_FROM_T
#undef MOEND_FROM_F
#undef MOEND_TO_E
#undef MOEND_TO_L
#undef MOEND_TO_H
#undef MOEND_TO_S
#undef MOEND_TO_R
#undef MOEND_TO_N
#undef MOEND_TO_T
#undef MOEND_TO_F
#undef MOEND_REPORT_RESULT_FIELDS
#undef MOEND_REPORT_FIELDS
#undef MOEND_LEASE_FIELDS
#undef MOEND_RUN_FIELDS
#undef MOEND_EVENT_FIELDS
#undef MOEND_VERSIONED_TABLE_FIELDS
#undef MOEND_PARTIAL_TABLE_FIELDS
#undef MOEND_JOB_FIELDS
#undef MOEND_SHARD_FIELDS
#undef MOEND_SPEC_FIELDS
#undef MOEND_MODEL_FIELDS
#undef MOEND_SHAPE_FIELDS
#undef MOEND_TABLE_FIELDS
#undef MOEND_TUPLE_FIELDS

}  // namespace moend::registry::fields

#endif  // MOEND_SERVICES_REGISTRY_MESSAGE_FIELDS_H_

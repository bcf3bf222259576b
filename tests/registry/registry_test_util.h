// Helpers shared by the registry tests: the shipped model's config, a
// deterministic per-(sample, layer, tuple) sensitivity, and rows for a shard
// computed from it.
#ifndef MOEND_TESTS_REGISTRY_REGISTRY_TEST_UTIL_H_
#define MOEND_TESTS_REGISTRY_REGISTRY_TEST_UTIL_H_

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/compression.h"
#include "core/sensitivity_table.h"
#include "services/registry/registry_types.h"

namespace moend::registry::testing {

inline std::string TinyConfigPath() {
  return std::string(MOEND_SOURCE_DIR) + "/models/tinycode/config.json";
}

inline std::string TinyConfig() {
  std::ifstream in(TinyConfigPath());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A small grid so tests stay fast.
inline std::vector<CompressionTuple> SmallTuples() {
  return {{1.0, 16, 16}, {0.5, 8, 4}, {0.125, 2, 2}};
}

// The "measured" sensitivity of one calibration sequence: >= 0, varies with
// every index.
inline double SampleValue(int64_t sample, int64_t layer, int64_t tuple) {
  return (std::sin(sample * 12.9898 + layer * 78.233 + tuple * 37.719) + 1.0) * 0.5 *
         static_cast<double>(layer + 1) * static_cast<double>(tuple + 1);
}

// What a worker reports for a shard: the mean over its samples.
inline std::vector<std::vector<double>> ShardRows(const Shard& shard, size_t num_tuples) {
  std::vector<std::vector<double>> rows;
  for (int64_t l = shard.layer_begin; l < shard.layer_end; ++l) {
    std::vector<double> row(num_tuples, 0.0);
    for (size_t t = 0; t < num_tuples; ++t) {
      for (int64_t i = shard.sample_begin; i < shard.sample_end; ++i) {
        row[t] += SampleValue(i, l, static_cast<int64_t>(t));
      }
      row[t] /= static_cast<double>(shard.samples());
    }
    rows.push_back(row);
  }
  return rows;
}

// The whole-table answer, computed directly over every sample.
inline std::vector<std::vector<double>> ExpectedTable(int64_t num_layers, int64_t num_samples,
                                                      size_t num_tuples) {
  std::vector<std::vector<double>> s(num_layers, std::vector<double>(num_tuples, 0.0));
  for (int64_t l = 0; l < num_layers; ++l) {
    for (size_t t = 0; t < num_tuples; ++t) {
      for (int64_t i = 0; i < num_samples; ++i) s[l][t] += SampleValue(i, l, t);
      s[l][t] /= static_cast<double>(num_samples);
    }
  }
  return s;
}

// A table of tinycode's shape over SmallTuples: the mean over `samples`.
inline SensitivityTable TinyTable(int64_t samples) {
  SensitivityTable t;
  t.model = "tinycode";
  t.num_layers = 12;
  t.num_kv_heads = 2;
  t.head_dim = 64;
  t.seq_len = 4096;
  t.compression_point = 3840;
  t.samples = samples;
  t.tuples = SmallTuples();
  t.s = ExpectedTable(12, samples, t.tuples.size());
  return t;
}

inline ShardReport ReportFor(const Lease& lease) {
  return ReportOf(lease, ShardRows(lease.shard, lease.spec.tuples.size()));
}

// Per-head rows of `rows` ([layers][tuples]) for `heads` KV heads: head h is
// rows * (h + 1), so that the merged s_head[l][h] is (h + 1) times s[l].
inline std::vector<std::vector<std::vector<double>>> HeadRows(
    const std::vector<std::vector<double>>& rows, int64_t heads) {
  std::vector<std::vector<std::vector<double>>> out;
  for (const std::vector<double>& row : rows) {
    std::vector<std::vector<double>> layer;
    for (int64_t h = 0; h < heads; ++h) {
      std::vector<double> head_row;
      for (double v : row) head_row.push_back(v * static_cast<double>(h + 1));
      layer.push_back(head_row);
    }
    out.push_back(layer);
  }
  return out;
}

// TinyTable with per-head rows (HeadRows of s over its 2 KV heads) and signals.
inline SensitivityTable TinyHeadTable(int64_t samples) {
  SensitivityTable t = TinyTable(samples);
  t.s_head = HeadRows(t.s, t.num_kv_heads);
  t.signals = {"code: test rows", "recall: test rows"};
  return t;
}

}  // namespace moend::registry::testing

#endif  // MOEND_TESTS_REGISTRY_REGISTRY_TEST_UTIL_H_

// The sensitivity table: s[layer][tuple], the relative attention output error
// of compressing that layer with that tuple (DESIGN.md section 3), and
// optionally s_head[layer][kv_head][tuple], the same error of one KV head's
// query group when that head alone takes the tuple (per-head routing).
// Its JSON form is what `moendctl calibrate` writes, what the registry returns
// and what `moendctl solve` reads.
#ifndef MOEND_CORE_SENSITIVITY_TABLE_H_
#define MOEND_CORE_SENSITIVITY_TABLE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/compression.h"

namespace moend {

struct SensitivityTable {
  std::string model;
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t seq_len = 0;            // calibration sequence length n
  int64_t compression_point = 0;  // c = n - 256
  int64_t samples = 0;            // sequences averaged
  std::vector<CompressionTuple> tuples;
  std::vector<std::vector<double>> s;  // [num_layers][tuples.size()]
  // [num_layers][num_kv_heads][tuples.size()], or empty: a table without it
  // can only be solved per layer.
  std::vector<std::vector<std::vector<double>>> s_head;
  // What was measured, one line per signal summed into s (e.g. "code: 16 x
  // 4096 tokens of data/calibration.bin, c 3840"); informational.
  std::vector<std::string> signals;

  KvShape kv_shape() const { return {num_kv_heads, head_dim}; }
  bool has_heads() const { return !s_head.empty(); }
  // Shapes agree, every tuple is valid and distinct, every s is finite and >= 0.
  absl::Status Validate() const;
};

// The sum of two signals measured over the same grid (docs/DESIGN.md section
// 3.4): s = a.s + b.s, s_head = a.s_head + b.s_head (kept only when both have
// it), samples added, signals concatenated; seq_len and compression_point
// (the default context of a ratio budget) are a's. InvalidArgument naming the
// difference when model, shape or tuples differ.
absl::StatusOr<SensitivityTable> SumTables(const SensitivityTable& a, const SensitivityTable& b);

// JSON: {"model", "num_layers", "num_kv_heads", "head_dim", "seq_len",
// "compression_point", "samples", "tuples": [{"keep","kbits","vbits"}...],
// "s": [[...per tuple] per layer], optional "s_head": [[[...per tuple] per KV
// head] per layer], optional "signals": [strings]}. Parsing validates.
absl::StatusOr<SensitivityTable> SensitivityTableFromJson(const std::string& text);
std::string SensitivityTableToJson(const SensitivityTable& table);

absl::StatusOr<SensitivityTable> ReadSensitivityTable(const std::string& path);
absl::Status WriteSensitivityTable(const SensitivityTable& table, const std::string& path);

// How far s values `a` move from a reference `b` of the same shape
// ([layers][tuples]), over all (layer, tuple) entries.
struct SensitivityAgreement {
  int64_t entries = 0;
  // Spearman rank correlation (Pearson correlation of the ranks, ties at their
  // average rank); 1 for identical orders.
  double spearman = 0;
  // |a - b| / b over the entries with b > min_reference (and b > 0; with
  // min_reference 0 an entry with b == 0 and a != 0 counts as infinitely
  // far); its median and its maximum, and where that is (-1: no entry).
  double median_relative = 0;
  double worst_relative = 0;
  int64_t worst_layer = -1, worst_tuple = -1;
};
// min_reference leaves out of the relative differences the errors too small
// to matter to a plan (s of 1e-7 is a 0.03% output error), whose relative
// change can be large. InvalidArgument when the shapes differ or are empty.
absl::StatusOr<SensitivityAgreement> CompareSensitivities(const std::vector<std::vector<double>>& a,
                                                          const std::vector<std::vector<double>>& b,
                                                          double min_reference = 0);

}  // namespace moend

#endif  // MOEND_CORE_SENSITIVITY_TABLE_H_

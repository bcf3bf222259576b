#include "services/registry/merge.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace moend::registry {

absl::StatusOr<SensitivityTable> MergePartialTables(const JobSpec& spec, const ModelShape& shape,
                                                    const std::vector<ShardResult>& parts) {
  const int64_t num_layers = shape.num_layers;
  const size_t num_tuples = spec.tuples.size();
  SensitivityTable out;
  out.model = spec.model;
  out.num_layers = num_layers;
  out.num_kv_heads = shape.num_kv_heads;
  out.head_dim = shape.head_dim;
  out.seq_len = spec.seq_len;
  out.compression_point = spec.compression_point;
  out.samples = spec.num_samples;
  out.tuples = spec.tuples;
  out.s.assign(num_layers, std::vector<double>(num_tuples, 0.0));

  // Per-head rows only when every part has them.
  const bool heads = !parts.empty() &&
                     std::all_of(parts.begin(), parts.end(),
                                 [](const ShardResult& r) { return !r.table.s_head.empty(); });
  const int64_t num_heads = shape.num_kv_heads;
  if (heads) {
    out.s_head.assign(num_layers, std::vector<std::vector<double>>(
                                      num_heads, std::vector<double>(num_tuples, 0.0)));
  }

  std::vector<double> weight(num_layers, 0.0);
  // Per layer: the sample ranges seen, to check exact coverage.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> ranges(num_layers);
  for (size_t p = 0; p < parts.size(); ++p) {
    const ShardResult& part = parts[p];
    const PartialTable& t = part.table;
    if (t.layer_begin < 0 || t.layer_end > num_layers || t.layer_begin >= t.layer_end) {
      return absl::InvalidArgumentError(absl::StrCat("part ", p, ": layer range [", t.layer_begin,
                                                     ", ", t.layer_end, ") is not inside [0, ",
                                                     num_layers, ")"));
    }
    if (part.sample_begin < 0 || part.sample_end > spec.num_samples ||
        part.sample_begin >= part.sample_end) {
      return absl::InvalidArgumentError(absl::StrCat(
          "part ", p, ": sample range [", part.sample_begin, ", ", part.sample_end,
          ") is not inside [0, ", spec.num_samples, ")"));
    }
    if (t.samples <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("part ", p, ": samples must be >= 1"));
    }
    if (t.tuples != spec.tuples) {
      return absl::InvalidArgumentError(
          absl::StrCat("part ", p, ": tuples differ from the job's ", num_tuples, " tuples"));
    }
    if (static_cast<int64_t>(t.s.size()) != t.layer_end - t.layer_begin) {
      return absl::InvalidArgumentError(absl::StrCat("part ", p, ": ", t.s.size(),
                                                     " rows for ", t.layer_end - t.layer_begin,
                                                     " layers"));
    }
    if (heads && static_cast<int64_t>(t.s_head.size()) != t.layer_end - t.layer_begin) {
      return absl::InvalidArgumentError(absl::StrCat("part ", p, ": per-head rows for ",
                                                     t.s_head.size(), " layers, not ",
                                                     t.layer_end - t.layer_begin));
    }
    for (int64_t l = t.layer_begin; l < t.layer_end; ++l) {
      const std::vector<double>& row = t.s[l - t.layer_begin];
      if (row.size() != num_tuples) {
        return absl::InvalidArgumentError(absl::StrCat("part ", p, ": layer ", l, " has ",
                                                       row.size(), " values for ", num_tuples,
                                                       " tuples"));
      }
      for (size_t i = 0; i < num_tuples; ++i) out.s[l][i] += static_cast<double>(t.samples) * row[i];
      if (heads) {
        const std::vector<std::vector<double>>& head_rows = t.s_head[l - t.layer_begin];
        if (static_cast<int64_t>(head_rows.size()) != num_heads) {
          return absl::InvalidArgumentError(absl::StrCat("part ", p, ": layer ", l, " has ",
                                                         head_rows.size(), " per-head rows for ",
                                                         num_heads, " KV heads"));
        }
        for (int64_t h = 0; h < num_heads; ++h) {
          if (head_rows[h].size() != num_tuples) {
            return absl::InvalidArgumentError(
                absl::StrCat("part ", p, ": layer ", l, " head ", h, " has ", head_rows[h].size(),
                             " values for ", num_tuples, " tuples"));
          }
          for (size_t i = 0; i < num_tuples; ++i) {
            out.s_head[l][h][i] += static_cast<double>(t.samples) * head_rows[h][i];
          }
        }
      }
      weight[l] += static_cast<double>(t.samples);
      ranges[l].push_back({part.sample_begin, part.sample_end});
    }
  }
  for (int64_t l = 0; l < num_layers; ++l) {
    std::vector<std::pair<int64_t, int64_t>>& r = ranges[l];
    std::sort(r.begin(), r.end());
    int64_t next = 0;
    for (const auto& [b, e] : r) {
      if (b != next) {
        return absl::InvalidArgumentError(absl::StrCat(
            "layer ", l, ": samples ", b < next ? "overlap" : "missing", " at sample ",
            std::min(b, next), "; every layer needs samples [0, ", spec.num_samples,
            ") exactly once"));
      }
      next = e;
    }
    if (next != spec.num_samples) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, ": samples [", next, ", ",
                                                     spec.num_samples, ") are missing"));
    }
    for (double& v : out.s[l]) v /= weight[l];
    if (heads) {
      for (std::vector<double>& row : out.s_head[l]) {
        for (double& v : row) v /= weight[l];
      }
    }
  }
  MOEND_RETURN_IF_ERROR(out.Validate());
  return out;
}

}  // namespace moend::registry

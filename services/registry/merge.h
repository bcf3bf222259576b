// Merging the partial tables of a calibration job's shards into one table.
#ifndef MOEND_SERVICES_REGISTRY_MERGE_H_
#define MOEND_SERVICES_REGISTRY_MERGE_H_

#include <vector>

#include "absl/status/statusor.h"
#include "core/sensitivity_table.h"
#include "services/registry/registry_types.h"

namespace moend::registry {

// One shard's sample range and its reported partial table.
struct ShardResult {
  int64_t sample_begin = 0;
  int64_t sample_end = 0;
  PartialTable table;
};

// s[l][t] = sum over the shards covering layer l of samples * s_shard / total
// samples, i.e. the mean over every calibration sequence. Requires that, for
// every layer, the covering shards' sample ranges are disjoint and together
// are exactly [0, spec.num_samples), and that every part uses spec.tuples in
// order; otherwise InvalidArgument naming the layer or shard.
// s_head (per-head routing) is merged the same way, [layer][head][tuple],
// when every part has per-head rows (num_kv_heads rows per layer); when any
// part has none (a worker that measures only layers) the merged table has no
// s_head and is solved per layer.
absl::StatusOr<SensitivityTable> MergePartialTables(const JobSpec& spec, const ModelShape& shape,
                                                    const std::vector<ShardResult>& parts);

}  // namespace moend::registry

#endif  // MOEND_SERVICES_REGISTRY_MERGE_H_

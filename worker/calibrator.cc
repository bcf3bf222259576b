#include "worker/calibrator.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "runtime/token_file.h"
#include "runtime/gemm.h"
#include "runtime/partial_attention.h"
#include "kernels/compressed_cache.h"
#include "kernels/dequantize.h"
#ifdef MOEND_WITH_CUDA
#include "worker/gpu_calibrator.h"
#endif

namespace moend::worker {
namespace {

using kernels::CompressedLayer;
using kernels::LayerTensors;

// The kept tokens of one KV head as dense float rows: k, v [rows, D].
struct DenseHead {
  int64_t rows = 0;
  std::vector<float> k, v;
};

DenseHead Densify(const CompressedLayer& layer, int64_t h) {
  DenseHead out;
  out.rows = layer.AttendedTokens(h);
  kernels::DequantizeHead(layer, h, &out.k, &out.v);
  return out;
}

}  // namespace

absl::Status ValidateCalibrationOptions(const CalibrationOptions& o) {
  if (o.probe_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("probe_tokens ", o.probe_tokens, " must be at least 1"));
  }
  if (o.tuples.empty()) return absl::InvalidArgumentError("no tuples to calibrate");
  bool has_reference = false;
  for (const CompressionTuple& t : o.tuples) {
    MOEND_RETURN_IF_ERROR(ValidateTuple(t));
    has_reference |= t == CompressionTuple{1.0, 16, 16};
  }
  if (!has_reference) {
    return absl::InvalidArgumentError("the tuple grid must include (1,16,16), the reference");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<double>> MeasureLayer(const LayerTensors& x,
                                                 const CalibrationOptions& options,
                                                 std::vector<std::vector<double>>* per_head) {
  MOEND_RETURN_IF_ERROR(ValidateCalibrationOptions(options));
  const int64_t n = x.tokens, probes = options.probe_tokens;
  const int64_t c = n - probes;
  if (c < 1) {
    return absl::InvalidArgumentError(absl::StrCat("sequence of ", n, " tokens is too short for ",
                                                   probes, " probe queries"));
  }
  MOEND_RETURN_IF_ERROR(kernels::ValidateLayerTensors(x, c));
  MOEND_ASSIGN_OR_RETURN(const kernels::Backend backend, kernels::ResolveBackend(options.backend));
#ifdef MOEND_WITH_CUDA
  // The whole grid on the device (worker/gpu_calibrator.h).
  if (backend == kernels::Backend::kCuda) return MeasureLayerOnGpu(x, options, per_head);
#endif
  (void)backend;
  const int64_t d = x.head_dim, heads = x.num_heads, group = x.num_heads / x.num_kv_heads;
  auto probe_q = [&](int64_t hq) { return x.q + (hq * n + c) * d; };

  // The uncompressed tail [c, n): the same for every tuple.
  std::vector<SoftmaxPartial> tail(static_cast<size_t>(heads));
#pragma omp parallel for schedule(dynamic)
  for (int64_t hq = 0; hq < heads; ++hq) {
    std::vector<float> s;
    SoftmaxPartial& t = tail[static_cast<size_t>(hq)];
    const int64_t kv = hq / group;
    AttendPartial(probe_q(hq), probes, x.k + (kv * n + c) * d, x.v + (kv * n + c) * d, probes, d,
                  /*causal_offset=*/0, s, t);
  }

  MOEND_ASSIGN_OR_RETURN(kernels::EvictionScores scores,
                         kernels::ComputeEvictionScores(x, c, options.backend));

  // Tuples grouped by keep, then K bits, then V bits.
  std::map<double, std::map<int, std::map<int, size_t>>, std::greater<>> plan;
  for (size_t i = 0; i < options.tuples.size(); ++i) {
    const CompressionTuple& t = options.tuples[i];
    plan[t.keep][t.kbits][t.vbits] = i;
  }
  // outputs[i]: [heads, probes, D] attention output under tuple i.
  std::vector<std::vector<float>> outputs(options.tuples.size());
  for (const auto& [keep, by_kbits] : plan) {
    MOEND_ASSIGN_OR_RETURN(kernels::KeptSet kept,
                           kernels::SelectKept(scores, KeptTokens(keep, c), options.backend));
    std::set<int> bits;
    for (const auto& [kb, by_vbits] : by_kbits) {
      bits.insert(kb);
      for (const auto& [vb, index] : by_vbits) bits.insert(vb);
    }
    // dense[b][h]: head h's kept rows with K and V quantized at b bits.
    std::map<int, std::vector<DenseHead>> dense;
    for (int b : bits) {
      MOEND_ASSIGN_OR_RETURN(CompressedLayer layer,
                             kernels::QuantizeKept(x, kept, b, b, options.backend));
      for (int64_t h = 0; h < x.num_kv_heads; ++h) dense[b].push_back(Densify(layer, h));
    }
    for (const auto& [kb, by_vbits] : by_kbits) {
#pragma omp parallel for schedule(dynamic)
      for (int64_t hq = 0; hq < heads; ++hq) {
        const DenseHead& kh = dense.at(kb)[static_cast<size_t>(hq / group)];
        std::vector<float> s;
        SoftmaxPartial prefix;
        ExpScores(probe_q(hq), probes, kh.k.data(), kh.rows, d, /*causal_offset=*/-1, s, prefix);
        prefix.o.resize(static_cast<size_t>(probes * d));
        for (const auto& [vb, index] : by_vbits) {
          const DenseHead& vh = dense.at(vb)[static_cast<size_t>(hq / group)];
          if (kh.rows > 0) {
            Gemm(Transpose::kNo, probes, d, kh.rows, 1.0f, s.data(), kh.rows, vh.v.data(), d,
                 0.0f, prefix.o.data(), d);
          } else {
            std::fill(prefix.o.begin(), prefix.o.end(), 0.0f);
          }
          std::vector<float>& out = outputs[index];
#pragma omp critical
          if (out.empty()) out.resize(static_cast<size_t>(heads * probes * d));
          MergePartials(prefix, tail[static_cast<size_t>(hq)], probes, d,
                        out.data() + hq * probes * d, d);
        }
      }
    }
  }
  size_t ref = 0;
  while (!(options.tuples[ref] == CompressionTuple{1.0, 16, 16})) ++ref;
  const std::vector<float>& o = outputs[ref];
  // KV head h's GQA group is the contiguous block [h * span, (h + 1) * span)
  // of the [heads, probes, D] outputs. The layer's sums run over the elements
  // in order, as before the per-head sums were added beside them.
  const size_t kv_heads = static_cast<size_t>(x.num_kv_heads);
  const size_t span = static_cast<size_t>(group * probes * d);
  double norm = 0;
  std::vector<double> head_norm(kv_heads, 0.0);
  for (size_t h = 0; h < kv_heads; ++h) {
    for (size_t j = h * span; j < (h + 1) * span; ++j) {
      const double sq = static_cast<double>(o[j]) * o[j];
      norm += sq;
      head_norm[h] += sq;
    }
  }
  std::vector<double> result(options.tuples.size());
  std::vector<std::vector<double>> head_result(kv_heads, std::vector<double>(options.tuples.size()));
  for (size_t i = 0; i < outputs.size(); ++i) {
    double err = 0;
    for (size_t h = 0; h < kv_heads; ++h) {
      double head_err = 0;
      for (size_t j = h * span; j < (h + 1) * span; ++j) {
        const double diff = static_cast<double>(outputs[i][j]) - o[j];
        err += diff * diff;
        head_err += diff * diff;
      }
      head_result[h][i] = head_norm[h] > 0 ? head_err / head_norm[h] : 0.0;
    }
    result[i] = norm > 0 ? err / norm : 0.0;
  }
  if (per_head != nullptr) *per_head = std::move(head_result);
  return result;
}

absl::StatusOr<std::vector<std::vector<double>>> CalibrateLayers(
    const Model& model, std::span<const std::vector<int32_t>> sequences, int64_t layer_begin,
    int64_t layer_end, const CalibrationOptions& options, const ProgressFn& progress,
    std::vector<std::vector<std::vector<double>>>* per_head) {
  MOEND_RETURN_IF_ERROR(ValidateCalibrationOptions(options));
  const ModelConfig& cfg = model.config();
  if (layer_begin < 0 || layer_end > cfg.num_layers || layer_begin >= layer_end) {
    return absl::InvalidArgumentError(absl::StrCat("layer range [", layer_begin, ", ", layer_end,
                                                   ") is not inside [0, ", cfg.num_layers, ")"));
  }
  if (sequences.empty()) return absl::InvalidArgumentError("no calibration sequences");
  std::vector<std::vector<double>> sum(static_cast<size_t>(layer_end - layer_begin),
                                       std::vector<double>(options.tuples.size(), 0.0));
  // head_sum[layer - layer_begin][h][tuple], filled only when per_head is asked for.
  std::vector<std::vector<std::vector<double>>> head_sum;
  if (per_head != nullptr) {
    head_sum.assign(static_cast<size_t>(layer_end - layer_begin),
                    std::vector<std::vector<double>>(static_cast<size_t>(cfg.num_kv_heads),
                                                     std::vector<double>(options.tuples.size(), 0.0)));
  }
  // Where a measurement writes its per-head values (null when not asked for).
  std::vector<std::vector<double>> head_values;
  std::vector<std::vector<double>>* const heads_out = per_head != nullptr ? &head_values : nullptr;
  // Adds one layer's s and per-head s (or names the layer in its error).
  auto accumulate = [&](int64_t layer, const absl::StatusOr<std::vector<double>>& s) {
    if (!s.ok()) {
      return absl::Status(s.status().code(),
                          absl::StrCat("layer ", layer, ": ", s.status().message()));
    }
    std::vector<double>& row = sum[static_cast<size_t>(layer - layer_begin)];
    for (size_t t = 0; t < row.size(); ++t) row[t] += (*s)[t];
    if (per_head != nullptr) {
      std::vector<std::vector<double>>& rows = head_sum[static_cast<size_t>(layer - layer_begin)];
      if (head_values.size() != rows.size()) {
        return absl::InternalError(absl::StrCat("layer ", layer, ": ", head_values.size(),
                                                " per-head rows for ", rows.size(), " KV heads"));
      }
      for (size_t h = 0; h < rows.size(); ++h) {
        for (size_t t = 0; t < rows[h].size(); ++t) rows[h][t] += head_values[h][t];
      }
    }
    return absl::OkStatus();
  };
  auto tensors = [&](const LayerActivations& a) {
    return LayerTensors{a.q, a.k, a.v, cfg.num_heads, cfg.num_kv_heads, a.tokens, cfg.head_dim};
  };
  // One sequence: its forward, measuring the layers in range.
  std::function<absl::Status(std::span<const int32_t>)> measure_sequence;
#ifdef MOEND_WITH_CUDA
  // Forward and grid on the device (worker/gpu_model.h, worker/gpu_calibrator.h):
  // q/k/v never leave it.
  std::unique_ptr<GpuModel> gpu_model;
  std::unique_ptr<GpuCalibrator> calibrator;
  MOEND_ASSIGN_OR_RETURN(const kernels::Backend backend, kernels::ResolveBackend(options.backend));
  if (backend == kernels::Backend::kCuda) {
    MOEND_ASSIGN_OR_RETURN(gpu_model, GpuModel::Create(model, {.precision = options.gpu_forward}));
    MOEND_ASSIGN_OR_RETURN(calibrator, GpuCalibrator::Create());
    measure_sequence = [&](std::span<const int32_t> seq) {
      return gpu_model->Prefill(seq, layer_end, [&](const LayerActivations& a) {
        if (a.layer < layer_begin) return absl::OkStatus();
        return accumulate(a.layer, calibrator->MeasureDeviceLayer(tensors(a), options, heads_out));
      });
    };
  }
#endif
  if (!measure_sequence) {
    measure_sequence = [&](std::span<const int32_t> seq) {
      absl::Status error;
      auto forward = model.Forward(seq, [&](const LayerActivations& a) {
        if (!error.ok() || a.layer < layer_begin || a.layer >= layer_end) return;
        error = accumulate(a.layer, MeasureLayer(tensors(a), options, heads_out));
      });
      MOEND_RETURN_IF_ERROR(forward.status());
      return error;
    };
  }
  int64_t done = 0;
  for (const std::vector<int32_t>& seq : sequences) {
    MOEND_RETURN_IF_ERROR(measure_sequence(seq));
    if (progress) progress(++done, static_cast<int64_t>(sequences.size()));
  }
  for (auto& row : sum) {
    for (double& v : row) v /= static_cast<double>(sequences.size());
  }
  if (per_head != nullptr) {
    for (auto& layer : head_sum) {
      for (auto& row : layer) {
        for (double& v : row) v /= static_cast<double>(sequences.size());
      }
    }
    *per_head = std::move(head_sum);
  }
  return sum;
}

absl::StatusOr<std::vector<std::vector<int32_t>>> LoadCalibrationSequences(
    const std::string& path, int64_t seq_len, int64_t sample_begin, int64_t sample_end,
    int64_t vocab_size) {
  if (seq_len < 1) return absl::InvalidArgumentError("sequence length must be positive");
  MOEND_ASSIGN_OR_RETURN(const std::vector<int32_t> ids, ReadTokenFile(path));
  const int64_t available = static_cast<int64_t>(ids.size()) / seq_len;
  if (sample_end < 0) sample_end = available;
  if (sample_begin < 0 || sample_end <= sample_begin) {
    return absl::InvalidArgumentError(absl::StrCat("sample range [", sample_begin, ", ",
                                                   sample_end, ") is empty (", path, " holds ",
                                                   available, " sequences of ", seq_len,
                                                   " tokens)"));
  }
  if (sample_end > available) {
    return absl::OutOfRangeError(absl::StrCat(path, " holds ", available, " sequences of ",
                                              seq_len, " tokens; samples up to ", sample_end,
                                              " were asked for"));
  }
  std::vector<std::vector<int32_t>> out;
  for (int64_t i = sample_begin; i < sample_end; ++i) {
    const auto first = ids.begin() + i * seq_len;
    std::vector<int32_t>& seq = out.emplace_back(first, first + seq_len);
    if (vocab_size > 0) {
      MOEND_RETURN_IF_ERROR(CheckTokenIds(seq, vocab_size, absl::StrCat(path, ", sequence ", i)));
    }
  }
  return out;
}

}  // namespace moend::worker

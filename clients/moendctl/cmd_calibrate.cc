// moendctl calibrate: measure a model's sensitivity table locally.
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/flags.h"
#include "clients/moendctl/commands.h"
#include "clients/moendctl/progress.h"
#include "core/model.h"
#include "core/sensitivity_table.h"
#include "worker/calibrator.h"

namespace moend::ctl {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "moendctl calibrate: %s\n", std::string(s.message()).c_str());
  return s.code() == absl::StatusCode::kInvalidArgument ? kExitUsage : kExitFailure;
}

constexpr char kUsage[] =
    "usage: moendctl calibrate --model DIR --data FILE --out table.json\n"
    "                          [--seq-len 4096] [--samples N] [--probes 256] [--threads N]\n"
    "Measures s[layer][tuple] over the first N sequences of FILE (concatenated\n"
    "sequences of --seq-len bytes; default: all of them) for the 112-tuple grid,\n"
    "on this machine, and writes the sensitivity table JSON to --out.\n";

}  // namespace

int RunCalibrate(int argc, char** argv) {
  auto args = Args::Parse(argc, argv,
                          {"model", "data", "out", "seq-len", "samples", "probes", "threads"}, {});
  if (!args.ok()) return Fail(args.status());
  if (args->help()) {
    std::printf("%s", kUsage);
    return kExitOk;
  }
  auto model_dir = args->Required("model");
  auto data = args->Required("data");
  auto out = args->Required("out");
  auto seq_len = args->Int("seq-len", 4096);
  auto samples = args->Int("samples", 0);
  auto probes = args->Int("probes", 256);
  auto threads = args->Int("threads", 0);
  for (const absl::Status& s : {model_dir.status(), data.status(), out.status(), seq_len.status(),
                                samples.status(), probes.status(), threads.status()}) {
    if (!s.ok()) return Fail(s);
  }
  if (*seq_len <= *probes) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--seq-len ", *seq_len, " must exceed --probes ", *probes, " (the compression point is "
        "seq-len - probes)")));
  }
  auto model = Model::Load(*model_dir, ModelOptions{static_cast<int>(*threads)});
  if (!model.ok()) return Fail(model.status());
  auto sequences =
      worker::LoadCalibrationSequences(*data, *seq_len, 0, *samples > 0 ? *samples : -1);
  if (!sequences.ok()) return Fail(sequences.status());
  const int64_t count = static_cast<int64_t>(sequences->size());

  worker::CalibrationOptions options;
  options.probe_tokens = *probes;
  const ModelConfig& cfg = (*model)->config();
  ProgressBar bar(absl::StrCat("calibrating ", (*model)->name(), " (", cfg.num_layers,
                               " layers x ", options.tuples.size(), " tuples)"));
  bar.Update(0, count);
  auto s = worker::CalibrateLayers(**model, *sequences, 0, cfg.num_layers, options,
                                   [&](int64_t done, int64_t total) { bar.Update(done, total); });
  bar.Finish();
  if (!s.ok()) return Fail(s.status());

  SensitivityTable table;
  table.model = (*model)->name();
  table.num_layers = cfg.num_layers;
  table.num_kv_heads = cfg.num_kv_heads;
  table.head_dim = cfg.head_dim;
  table.seq_len = *seq_len;
  table.compression_point = *seq_len - *probes;
  table.samples = count;
  table.tuples = options.tuples;
  table.s = *std::move(s);
  absl::Status written = WriteSensitivityTable(table, *out);
  if (!written.ok()) return Fail(written);
  std::fprintf(stderr, "wrote %s: %lld layers x %zu tuples over %lld sequences\n", out->c_str(),
               static_cast<long long>(table.num_layers), table.tuples.size(),
               static_cast<long long>(count));
  return kExitOk;
}

}  // namespace moend::ctl

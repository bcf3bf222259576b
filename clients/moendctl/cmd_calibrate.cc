// moendctl calibrate: measure a model's sensitivity table locally.
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/flags.h"
#include "clients/moendctl/client_flags.h"
#include "clients/moendctl/commands.h"
#include "clients/moendctl/output.h"
#include "clients/moendctl/progress.h"
#include "runtime/model.h"
#include "core/sensitivity_table.h"
#include "worker/calibrator.h"

#ifdef MOEND_WITH_REGISTRY
#include <thread>

#include "services/registry/registry_client.h"
#endif

namespace moend::ctl {
namespace {

int Fail(const absl::Status& s) { return FailWith("calibrate", s); }

constexpr char kUsage[] =
    "usage: moendctl calibrate --model DIR --data FILE --out table.json\n"
    "                          [--seq-len 4096] [--samples N] [--probes 256] [--threads N]\n"
    "                          [--recall-data FILE|none] [--recall-seq-len 4096]\n"
    "                          [--recall-probes 33] [--recall-samples N]\n"
    "                          [--gpu-forward bf16|fp32]\n"
    "       moendctl calibrate --registry HOST:PORT --model DIR --data FILE --out table.json\n"
    "                          [--seq-len 4096] [--samples N] [--probes 256]\n"
    "                          [--samples-per-shard 1] [--layers-per-shard L] [--timeout 3600]\n"
    "                          [--reuse] [--tls-ca FILE [--tls-client-cert FILE\n"
    "                          --tls-client-key FILE]] [--auth-token-file FILE]\n"
    "Measures s[layer][tuple] and per KV head s_head[layer][head][tuple] over the\n"
    "first N sequences of FILE (concatenated sequences of --seq-len tokens;\n"
    "default: all of them) for the 112-tuple grid and writes the sensitivity\n"
    "table JSON to --out. Locally it adds the recall signal (docs/DESIGN.md\n"
    "section 3.4): the same measurement over --recall-data (default:\n"
    "calibration_recall.bin next to FILE, when it exists; 'none' leaves it out),\n"
    "sequences of --recall-seq-len tokens whose last --recall-probes tokens are\n"
    "a recall question and its answer (scripts/make_recall_calibration.py writes\n"
    "them); the table holds the sum of both. Without --registry it runs\n"
    "here; with it, it registers the model (named after its folder), submits a\n"
    "job that the registry's workers (moend-worker) shard among themselves, and\n"
    "waits for the merged table. FILE must be readable by the workers (an\n"
    "absolute path is sent). --reuse returns the model's stored table instead\n"
    "when the registry already has one. --tls-ca connects to the registry with\n"
    "TLS (verified by that PEM CA), --tls-client-cert/--tls-client-key present a\n"
    "client certificate, --auth-token-file sends the registry's bearer token.\n"
    "FILE holds one token per byte, or token ids in moend's token-id format (the\n"
    "8 bytes 0x93 'MOETOK' 0x01, then uint32 little-endian ids; written by\n"
    "scripts/make_synthetic_model.py --tokens): ids must be in the model's\n"
    "vocabulary. On a GPU the forward runs in BF16 (tensor cores, fp32\n"
    "accumulation; the default) or fp32 (--gpu-forward fp32, the CPU's arithmetic).\n";

#ifdef MOEND_WITH_REGISTRY
// Submits the calibration to a registry and waits for the merged table,
// riding out registry restarts.
int CalibrateOnFleet(const Args& args, const std::string& target, const std::string& model_dir,
                     const std::string& data, const std::string& out, int64_t seq_len,
                     int64_t samples, int64_t probes) {
  auto per_shard = args.Int("samples-per-shard", 1);
  auto layers_per_shard = args.Int("layers-per-shard", 0);
  auto timeout_s = args.Int("timeout", 3600);
  for (const absl::Status& s : {per_shard.status(), layers_per_shard.status(), timeout_s.status()}) {
    if (!s.ok()) return Fail(s);
  }
  registry::RegistryClientOptions options;
  options.target = target;
  options.security = ClientSecurityFromFlags(args);
  auto client = registry::RegistryClient::Connect(options);
  if (!client.ok()) return Fail(client.status());
  const std::string name =
      std::filesystem::path(model_dir).lexically_normal().filename().string();
  auto model = (*client)->RegisterModelFromFile(
      name, (std::filesystem::path(model_dir) / "config.json").string());
  if (!model.ok()) return Fail(model.status());
  if (args.Has("reuse") && model->version > 0) {
    // A calibration of this model is already stored: fetch it, do not redo it.
    auto table = (*client)->GetTable(name, model->version);
    if (!table.ok()) return Fail(table.status());
    if (absl::Status w = WriteSensitivityTable(table->table, out); !w.ok()) return Fail(w);
    std::fprintf(stderr, "reused stored table version %llu of %s (%lld samples); wrote %s\n",
                 static_cast<unsigned long long>(model->version), name.c_str(),
                 static_cast<long long>(table->table.samples), out.c_str());
    return kExitOk;
  }
  if (samples <= 0) {
    auto all = worker::LoadCalibrationSequences(data, seq_len, 0, -1);
    if (!all.ok()) return Fail(all.status());
    samples = static_cast<int64_t>(all->size());
  }
  registry::JobSpec spec;
  spec.model = name;
  spec.seq_len = seq_len;
  spec.compression_point = seq_len - probes;
  spec.num_samples = samples;
  spec.samples_per_shard = *per_shard;
  spec.layers_per_shard = *layers_per_shard;
  spec.dataset = std::filesystem::absolute(data).string();
  auto job = (*client)->SubmitJob(spec);
  if (!job.ok()) return Fail(job.status());
  const std::string job_id = job->spec.job_id;
  std::fprintf(stderr, "submitted %s: %s, %lld samples, waiting for workers\n", job_id.c_str(),
               name.c_str(), static_cast<long long>(samples));
  ProgressBar bar(absl::StrCat("calibrating ", name, " on the fleet (", job_id, ")"));
  const absl::Time deadline = absl::Now() + absl::Seconds(*timeout_s);
  int64_t last_done = -1;
  uint64_t version = 0;
  while (true) {
    auto j = (*client)->GetJob(job_id, /*include_shards=*/true);
    if (j.ok()) {
      if (j->shards_done != last_done) bar.Update(j->shards_done, j->shards_total());
      last_done = j->shards_done;
      if (j->state == registry::JobState::kDone) {
        version = j->table_version;
        break;
      }
    } else if (!absl::IsUnavailable(j.status()) && !absl::IsDeadlineExceeded(j.status())) {
      bar.Finish();
      return Fail(j.status());
    }
    if (absl::Now() > deadline) {
      bar.Finish();
      return Fail(absl::DeadlineExceededError(
          absl::StrCat(job_id, " not done after ", *timeout_s, " s (", last_done,
                       " shards done); is a moend-worker running?")));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  bar.Finish();
  auto table = (*client)->GetTable(name, version);
  if (!table.ok()) return Fail(table.status());
  absl::Status written = WriteSensitivityTable(table->table, out);
  if (!written.ok()) return Fail(written);
  std::fprintf(stderr, "wrote %s: table version %llu of %s\n", out.c_str(),
               static_cast<unsigned long long>(version), name.c_str());
  return kExitOk;
}
#endif

// One signal: s and s_head of every layer over `sequences` with `probes`
// probe tokens at their end.
absl::StatusOr<SensitivityTable> MeasureSignal(const Model& model,
                                               const std::vector<std::vector<int32_t>>& sequences,
                                               int64_t seq_len, int64_t probes,
                                               worker::CalibrationOptions options,
                                               const std::string& what) {
  options.probe_tokens = probes;
  const ModelConfig& cfg = model.config();
  const int64_t count = static_cast<int64_t>(sequences.size());
  ProgressBar bar(absl::StrCat("calibrating ", model.name(), ", ", what, " (", cfg.num_layers,
                               " layers x ", options.tuples.size(), " tuples)"));
  bar.Update(0, count);
  SensitivityTable table;
  auto s = worker::CalibrateLayers(model, sequences, 0, cfg.num_layers, options,
                                   [&](int64_t done, int64_t total) { bar.Update(done, total); },
                                   &table.s_head);
  bar.Finish();
  if (!s.ok()) return s.status();
  table.model = model.name();
  table.num_layers = cfg.num_layers;
  table.num_kv_heads = cfg.num_kv_heads;
  table.head_dim = cfg.head_dim;
  table.seq_len = seq_len;
  table.compression_point = seq_len - probes;
  table.samples = count;
  table.tuples = options.tuples;
  table.s = *std::move(s);
  return table;
}

// --recall-data: the flag, "none", or calibration_recall.bin beside --data.
std::optional<std::string> RecallData(const Args& args, const std::string& data) {
  if (auto flag = args.Optional("recall-data")) {
    if (*flag == "none") return std::nullopt;
    return *flag;
  }
  const std::filesystem::path beside =
      std::filesystem::path(data).parent_path() / "calibration_recall.bin";
  std::error_code ec;
  if (std::filesystem::is_regular_file(beside, ec)) return beside.string();
  return std::nullopt;
}

}  // namespace

int RunCalibrate(int argc, char** argv) {
  auto args = Args::Parse(argc, argv,
                          WithClientSecurityFlags({"model", "data", "out", "seq-len", "samples",
                                                   "probes", "threads", "registry",
                                                   "samples-per-shard", "layers-per-shard",
                                                   "timeout", "gpu-forward", "recall-data",
                                                   "recall-seq-len", "recall-probes",
                                                   "recall-samples"}),
                          {"reuse"});
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
  auto recall_seq_len = args->Int("recall-seq-len", 4096);
  auto recall_probes = args->Int("recall-probes", 33);
  auto recall_samples = args->Int("recall-samples", 0);
  for (const absl::Status& s :
       {model_dir.status(), data.status(), out.status(), seq_len.status(), samples.status(),
        probes.status(), threads.status(), recall_seq_len.status(), recall_probes.status(),
        recall_samples.status()}) {
    if (!s.ok()) return Fail(s);
  }
  const std::string gpu_forward = args->Optional("gpu-forward").value_or("bf16");
  if (gpu_forward != "bf16" && gpu_forward != "fp32") {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--gpu-forward '", gpu_forward, "' is not one of bf16, fp32")));
  }
  if (*seq_len <= *probes || *probes < 1) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--seq-len ", *seq_len, " must exceed --probes ", *probes, " >= 1 (the compression point "
        "is seq-len - probes)")));
  }
  if (*recall_seq_len <= *recall_probes || *recall_probes < 1) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--recall-seq-len ", *recall_seq_len, " must exceed --recall-probes ", *recall_probes,
        " >= 1")));
  }
  if (auto target = args->Optional("registry")) {
    // A fleet job has one dataset: the recall signal is measured locally only
    // (docs/DESIGN.md section 3.6), so its flags would be silently ignored here.
    for (const char* flag : {"recall-data", "recall-seq-len", "recall-probes", "recall-samples"}) {
      if (args->Has(flag)) {
        return Fail(absl::InvalidArgumentError(absl::StrCat(
            "--", flag, " is not supported with --registry: fleet jobs measure the code signal "
            "only; calibrate locally and `moendctl publish` the table")));
      }
    }
#ifdef MOEND_WITH_REGISTRY
    return CalibrateOnFleet(*args, *target, *model_dir, *data, *out, *seq_len, *samples, *probes);
#else
    return Fail(absl::UnimplementedError("this moendctl was built without the registry client"));
#endif
  }
  auto model = Model::Load(*model_dir, ModelOptions{static_cast<int>(*threads)});
  if (!model.ok()) return Fail(model.status());
  const std::optional<std::string> recall_data = RecallData(*args, *data);
  const int64_t vocab = (*model)->config().vocab_size;
  auto sequences =
      worker::LoadCalibrationSequences(*data, *seq_len, 0, *samples > 0 ? *samples : -1, vocab);
  if (!sequences.ok()) return Fail(sequences.status());
  // Load both datasets before the first (long) measurement, so that a bad
  // recall file fails at once.
  absl::StatusOr<std::vector<std::vector<int32_t>>> recall_sequences;
  if (recall_data) {
    recall_sequences = worker::LoadCalibrationSequences(
        *recall_data, *recall_seq_len, 0, *recall_samples > 0 ? *recall_samples : -1, vocab);
    if (!recall_sequences.ok()) {
      return Fail(absl::Status(recall_sequences.status().code(),
                               absl::StrCat("--recall-data: ", recall_sequences.status().message())));
    }
  }
  const int64_t count = static_cast<int64_t>(sequences->size());

  worker::CalibrationOptions options;
  options.gpu_forward =
      gpu_forward == "fp32" ? worker::GpuForwardPrecision::kFloat32 : worker::GpuForwardPrecision::kBf16;
  auto code = MeasureSignal(**model, *sequences, *seq_len, *probes, options, "code probes");
  if (!code.ok()) return Fail(code.status());
  code->signals.push_back(absl::StrCat("code: ", count, " x ", *seq_len, " tokens of ", *data,
                                       ", last ", *probes, " are probes"));
  SensitivityTable table = *std::move(code);
  if (recall_data) {
    auto recall = MeasureSignal(**model, *recall_sequences, *recall_seq_len, *recall_probes,
                                options, "recall probes");
    if (!recall.ok()) return Fail(recall.status());
    recall->signals.push_back(absl::StrCat("recall: ", recall->samples, " x ", *recall_seq_len,
                                           " tokens of ", *recall_data, ", last ", *recall_probes,
                                           " (question and answer) are probes"));
    auto sum = SumTables(table, *recall);
    if (!sum.ok()) return Fail(sum.status());
    table = *std::move(sum);
  }
  absl::Status written = WriteSensitivityTable(table, *out);
  if (!written.ok()) return Fail(written);
  std::fprintf(stderr, "wrote %s: %lld layers x %lld KV heads x %zu tuples over %lld sequences%s\n",
               out->c_str(), static_cast<long long>(table.num_layers),
               static_cast<long long>(table.num_kv_heads), table.tuples.size(),
               static_cast<long long>(table.samples),
               recall_data ? " (code + recall probes)" : "");
  return kExitOk;
}

constexpr char kPublishUsage[] =
    "usage: moendctl publish --registry HOST:PORT --table table.json\n"
    "                        [--tls-ca FILE [--tls-client-cert FILE --tls-client-key FILE]]\n"
    "                        [--auth-token-file FILE]\n"
    "Stores a sensitivity table (e.g. from local `moendctl calibrate`, which adds\n"
    "the recall signal that fleet jobs do not measure) in the registry as the\n"
    "newest version of its model, which must be registered with the same shape.\n"
    "Routers then solve from it and stream the new plans to their watchers.\n";

int RunPublish(int argc, char** argv) {
  auto fail = [](const absl::Status& s) { return FailWith("publish", s); };
  auto args = Args::Parse(argc, argv, WithClientSecurityFlags({"registry", "table"}), {});
  if (!args.ok()) return fail(args.status());
  if (args->help()) {
    std::printf("%s", kPublishUsage);
    return kExitOk;
  }
  auto target = args->Required("registry");
  auto path = args->Required("table");
  for (const absl::Status& s : {target.status(), path.status()}) {
    if (!s.ok()) return fail(s);
  }
#ifdef MOEND_WITH_REGISTRY
  auto table = ReadSensitivityTable(*path);
  if (!table.ok()) return fail(table.status());
  registry::RegistryClientOptions options;
  options.target = *target;
  options.security = ClientSecurityFromFlags(*args);
  auto client = registry::RegistryClient::Connect(options);
  if (!client.ok()) return fail(client.status());
  auto version = (*client)->PublishTable(*table);
  if (!version.ok()) return fail(version.status());
  std::printf("published %s as version %llu of %s (%s)\n", path->c_str(),
              static_cast<unsigned long long>(*version), table->model.c_str(),
              table->has_heads() ? "per-head rows" : "per-layer rows only");
  return kExitOk;
#else
  return fail(absl::UnimplementedError("this moendctl was built without the registry client"));
#endif
}

}  // namespace moend::ctl

// Writes the small registry database that registry_format_test reads back:
// two models, a published table, a completed 4-shard job (merged into the
// model's version 2) and an unfinished 3-shard job with one shard done, one
// re-leased after its first lease lapsed (then heartbeated) and one pending.
// Every input is fixed (clock, names, values), so the test knows what each
// record must hold without running this code.
//
// format0_db/ was written by this program built at commit 24ea92c, the last
// commit whose registry stored moend.v1 RPC messages as records (format 0).
// Built at a later commit it writes that commit's format: the way to make
// the fixture for the next format change.
//
//   make_registry_db models/tinycode/config.json OUT_DIR   (OUT_DIR must not exist)
//
// Not built by default (it is a fixture generator): add
//   add_executable(make_registry_db testdata/make_registry_db.cc)
//   target_link_libraries(make_registry_db PRIVATE moend_registry)
// to tests/registry/CMakeLists.txt for a run.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "services/registry/registry.h"
#include "storage/store.h"

namespace {

using moend::CompressionTuple;
using namespace moend::registry;

// s of sample i, layer l, tuple t: exact in binary (multiples of 1/1024).
double Value(int64_t i, int64_t l, int64_t t) {
  return static_cast<double>((i + 1) * 64 + l * 8 + t) / 1024.0;
}

void Check(const absl::Status& s, const char* what) {
  if (s.ok()) return;
  std::fprintf(stderr, "%s: %s\n", what, s.ToString().c_str());
  std::exit(1);
}

ShardReport Report(const Lease& lease) {
  std::vector<std::vector<double>> s;
  for (int64_t l = lease.shard.layer_begin; l < lease.shard.layer_end; ++l) {
    std::vector<double> row;
    for (size_t t = 0; t < lease.spec.tuples.size(); ++t) {
      double sum = 0;
      for (int64_t i = lease.shard.sample_begin; i < lease.shard.sample_end; ++i) {
        sum += Value(i, l, static_cast<int64_t>(t));
      }
      row.push_back(sum / static_cast<double>(lease.shard.samples()));
    }
    s.push_back(row);
  }
  return ReportOf(lease, std::move(s));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: make_registry_db CONFIG_JSON OUT_DIR\n");
    return 2;
  }
  std::ifstream in(argv[1]);
  std::stringstream config;
  config << in.rdbuf();

  ManualClock clock(absl::FromUnixSeconds(1'700'000'000));
  auto store = moend::storage::Store::Open({.path = argv[2]});
  Check(store.status(), "open store");
  RegistryOptions options;
  options.clock = &clock;
  options.lease_duration = absl::Seconds(60);
  auto registry = Registry::Open(std::move(store).value(), options);
  Check(registry.status(), "open registry");
  Registry& r = **registry;

  Check(r.RegisterModel("tinycode", config.str()).status(), "register tinycode");
  clock.Advance(absl::Seconds(1));
  Check(r.RegisterModel("tinycode-b", config.str()).status(), "register tinycode-b");
  clock.Advance(absl::Seconds(1));

  const std::vector<CompressionTuple> tuples = {
      {1.0, 16, 16}, {0.5, 16, 16}, {1.0, 4, 4}, {0.25, 2, 8}};
  moend::SensitivityTable published;
  published.model = "tinycode";
  published.num_layers = 12;
  published.num_kv_heads = 2;
  published.head_dim = 64;
  published.seq_len = 4096;
  published.compression_point = 3840;
  published.samples = 16;
  published.tuples = tuples;
  for (int64_t l = 0; l < 12; ++l) {
    std::vector<double> row;
    for (int64_t t = 0; t < 4; ++t) row.push_back(Value(100, l, t));
    published.s.push_back(row);
  }
  Check(r.PublishTable(published).status(), "publish");  // tinycode version 1
  clock.Advance(absl::Seconds(1));

  JobSpec a;
  a.job_id = "job-a";
  a.model = "tinycode";
  a.tuples = tuples;
  a.seq_len = 512;
  a.compression_point = 256;
  a.num_samples = 4;
  a.samples_per_shard = 2;
  a.layers_per_shard = 6;
  a.dataset = "data/calibration.bin";
  Check(r.SubmitJob(a).status(), "submit job-a");  // 2 sample ranges x 2 layer ranges
  clock.Advance(absl::Seconds(1));
  for (int i = 0; i < 4; ++i) {
    auto lease = r.LeaseShard("worker-" + std::to_string(i), "job-a");
    Check(lease.status(), "lease job-a");
    clock.Advance(absl::Seconds(1));
    Check(r.ReportShard(Report(**lease)).status(), "report job-a");  // the 4th: version 2
    clock.Advance(absl::Seconds(1));
  }

  JobSpec b;  // job_id assigned: job-000002
  b.model = "tinycode-b";
  b.tuples = tuples;
  b.seq_len = 300;
  b.num_samples = 3;
  b.samples_per_shard = 1;
  b.dataset = "data/calibration.bin";
  Check(r.SubmitJob(b).status(), "submit job b");
  clock.Advance(absl::Seconds(1));
  auto b0 = r.LeaseShard("worker-b0", "job-000002");  // shard 0
  Check(b0.status(), "lease b0");
  auto b1 = r.LeaseShard("worker-b1", "job-000002");  // shard 1, attempt 1
  Check(b1.status(), "lease b1");
  clock.Advance(absl::Seconds(1));
  Check(r.ReportShard(Report(**b0)).status(), "report b0");
  clock.Advance(absl::Seconds(61));                   // b1's lease lapses
  auto b1again = r.LeaseShard("worker-b2", "job-000002");  // shard 1, attempt 2
  Check(b1again.status(), "re-lease b1");
  clock.Advance(absl::Seconds(10));
  Check(r.Heartbeat((*b1again)->lease_id, "worker-b2").status(), "heartbeat");
  std::printf("wrote %s\n", argv[2]);
  return 0;
}

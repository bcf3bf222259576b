// Registry ingest: shard reports per second with synced writes.
//
//   build/bin/registry_ingest_bench [--db DIR] [--reports N] [--threads T]
//       [--tuples K] [--no-sync]
//
// Registers a 12-layer model (the shipped tinycode shape), submits a job of N
// shards (one sample x all 12 layers each, K tuples: every report carries
// 12 x K doubles), leases every shard up front (not timed), then times N
// ReportShard calls: first in-process against the Registry class, then over
// gRPC on loopback with T client threads, each on a fresh job and database.
// The last report of each job merges all N partial tables and is included.
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "core/flags.h"
#include "services/registry/registry.h"
#include "services/registry/registry_client.h"
#include "services/registry/registry_service.h"

namespace moend::registry {
namespace {

constexpr char kConfig[] =
    R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 12,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "hidden_size": 256,
        "max_position_embeddings": 4096})";

struct Setup {
  std::unique_ptr<Registry> registry;
  std::vector<ShardReport> reports;
};

absl::StatusOr<Setup> Prepare(const std::string& db, int64_t n, int64_t tuples, bool sync) {
  std::filesystem::remove_all(db);
  auto store = storage::Store::Open({.path = db, .sync_writes = sync});
  if (!store.ok()) return store.status();
  auto registry = Registry::Open(std::move(store).value(), {.lease_duration = absl::Hours(1)});
  if (!registry.ok()) return registry.status();
  Setup setup{std::move(registry).value(), {}};
  if (auto m = setup.registry->RegisterModel("bench", kConfig); !m.ok()) return m.status();
  auto grid = TupleGrid::Default().Tuples();
  grid.resize(std::min<size_t>(grid.size(), tuples));
  auto job = setup.registry->SubmitJob({.model = "bench",
                                        .tuples = grid,
                                        .seq_len = 4096,
                                        .num_samples = n,
                                        .samples_per_shard = 1,
                                        .layers_per_shard = 12});
  if (!job.ok()) return job.status();
  for (int64_t i = 0; i < n; ++i) {
    auto lease = setup.registry->LeaseShard("bench-worker");
    if (!lease.ok()) return lease.status();
    const Lease& l = **lease;
    ShardReport r{l.lease_id, l.worker_id, l.job_id, l.shard.index, l.spec.model, {}};
    r.table = {l.shard.layer_begin, l.shard.layer_end, l.shard.samples(), l.spec.tuples, {}, {}};
    for (int64_t layer = 0; layer < 12; ++layer) {
      std::vector<double> row(grid.size());
      for (size_t t = 0; t < row.size(); ++t) row[t] = 1e-3 * (i % 7 + layer + t);
      r.table.s.push_back(row);
    }
    setup.reports.push_back(std::move(r));
  }
  return setup;
}

void Print(const char* mode, int threads, int64_t n, absl::Duration d, bool sync) {
  double secs = absl::ToDoubleSeconds(d);
  std::printf("%-10s threads=%d reports=%lld sync=%s: %.3f s, %.0f reports/s, %.2f ms/report\n",
              mode, threads, static_cast<long long>(n), sync ? "on" : "off", secs, n / secs,
              1e3 * secs / n);
}

int Run(int argc, char** argv) {
  auto args = Args::Parse(argc - 1, argv + 1, {"db", "reports", "threads", "tuples"}, {"no-sync"});
  if (!args.ok() || args->help()) {
    std::cerr << (args.ok() ? "" : std::string(args.status().message()) + "\n")
              << "usage: registry_ingest_bench [--db DIR] [--reports N] [--threads T] "
                 "[--tuples K] [--no-sync]\n";
    return args.ok() ? 0 : 2;
  }
  std::string db = args->Optional("db").value_or(
      (std::filesystem::temp_directory_path() / "moend-registry-bench").string());
  const int64_t n = args->Int("reports", 2000).value_or(2000);
  const int threads = static_cast<int>(args->Int("threads", 4).value_or(4));
  const int64_t tuples = args->Int("tuples", 112).value_or(112);
  const bool sync = !args->Has("no-sync");
  std::printf("registry ingest: %lld reports of 12 layers x %lld tuples, db %s\n",
              static_cast<long long>(n), static_cast<long long>(tuples), db.c_str());

  {  // In-process, one thread.
    auto setup = Prepare(db, n, tuples, sync);
    if (!setup.ok()) {
      std::cerr << setup.status() << "\n";
      return 1;
    }
    absl::Time start = absl::Now();
    for (const ShardReport& r : setup->reports) {
      auto result = setup->registry->ReportShard(r);
      if (!result.ok()) {
        std::cerr << result.status() << "\n";
        return 1;
      }
    }
    Print("in-process", 1, n, absl::Now() - start, sync);
    if (!setup->registry->GetTable("bench", 1).ok()) {
      std::cerr << "the job did not complete\n";
      return 1;
    }
  }
  {  // gRPC loopback, `threads` clients.
    auto setup = Prepare(db, n, tuples, sync);
    if (!setup.ok()) {
      std::cerr << setup.status() << "\n";
      return 1;
    }
    auto server = RegistryServer::Start(setup->registry.get(), {});
    if (!server.ok()) {
      std::cerr << server.status() << "\n";
      return 1;
    }
    std::atomic<int64_t> next{0};
    std::atomic<bool> failed{false};
    std::vector<std::unique_ptr<RegistryClient>> clients;
    for (int t = 0; t < threads; ++t) {
      auto c = RegistryClient::Connect({.target = (*server)->address()});
      if (!c.ok()) {
        std::cerr << c.status() << "\n";
        return 1;
      }
      clients.push_back(std::move(c).value());
    }
    absl::Time start = absl::Now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        for (int64_t i; (i = next++) < n;) {
          auto result = clients[t]->ReportShard(setup->reports[i]);
          if (!result.ok()) {
            std::cerr << result.status() << "\n";
            failed = true;
            return;
          }
        }
      });
    }
    for (auto& th : pool) th.join();
    Print("grpc", threads, n, absl::Now() - start, sync);
    (*server)->Shutdown();
    if (failed) return 1;
  }
  std::filesystem::remove_all(db);
  return 0;
}

}  // namespace
}  // namespace moend::registry

int main(int argc, char** argv) { return moend::registry::Run(argc, argv); }

// router_bench: the router's load generator.
//
// --mode=throughput (default): in one process, serves the real Router (over an
// in-memory table with the shipped model's shape and the default 112-tuple
// grid; the plan cache is warmed first) and a no-op Router service of the same
// proto shape that returns a fixed Plan of the same size, each on its own
// loopback port, and drives them in alternating rounds with the same load:
// --threads client threads, each with its own channel (TCP connection) and
// completion queue, keeping --depth async SolvePlan calls in flight for
// --seconds. Prints QPS, p50 and p99 per round and the ratio router/no-op.
//
// --mode=cold: what cold solves do to warm requests. Serves the real Router
// over a table source whose every GetTable takes --table_ms (a registry
// call), with the plan cache warmed for one request, and alternates rounds
// of the throughput load on that warm request alone and the same load while
// --cold_threads more clients each keep one cold SolvePlan in flight (a new
// table_version every call: a table fetch and a solve). Prints the warm
// requests' QPS, p50 and p99 per round and the ratios with / without the
// cold load.
//
// --mode=soak: the reliability suite's load (tests/reliability/soak.sh):
// SolvePlan at full rate for --seconds against the real binaries while
// --streams WatchPlans streams are open and new tables land; fails on any
// error, missed version or memory growth. With --calls=N the load is N calls
// instead (every one counted, no warm-up window), --publishes tables land at
// evenly spaced call counts, and --min_qps=Q fails a run slower than Q.
//
// --mode=watch: starts moend-registry and moend-router as child processes,
// publishes a table, opens --streams WatchPlans streams (callback API, over
// --channels connections), publishes --publishes newer tables and waits until
// every stream has each new plan, then closes and reopens all streams; prints
// the router's RSS and thread count at each step.
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "core/compression.h"
#include "core/status_macros.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/channel_arguments.h"
#include "moend/v1/router.grpc.pb.h"
#include "services/registry/registry_client.h"
#include "services/router/plan_convert.h"
#include "services/router/router.h"
#include "services/router/router_service.h"
#include "services/router/table_source.h"
#include "tests/util/child_process.h"

namespace moend::router {
namespace {

struct Flags {
  std::string mode = "throughput";
  int threads = 4;
  int depth = 8;
  double seconds = 5;
  int rounds = 2;
  int streams = 1000;
  int channels = 10;
  int publishes = 5;
  std::string solver = "exact";
  double ratio = 8;
  double publish_every = 5;  // soak: seconds between new tables
  int64_t calls = 0;         // soak: > 0 = this many SolvePlan calls instead of --seconds
  double min_qps = 0;        // soak: fail below this many calls per second
  int cold_threads = 8;      // cold: clients with one cold SolvePlan in flight each
  int table_ms = 50;         // cold: duration of one table-source GetTable
};

bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      std::fprintf(stderr, "router_bench: flags are --name=value, got '%s'\n", arg.c_str());
      return false;
    }
    const std::string name = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    bool ok = true;
    if (name == "mode") f->mode = value;
    else if (name == "threads") ok = absl::SimpleAtoi(value, &f->threads) && f->threads > 0;
    else if (name == "depth") ok = absl::SimpleAtoi(value, &f->depth) && f->depth > 0;
    else if (name == "seconds") ok = absl::SimpleAtod(value, &f->seconds) && f->seconds > 0;
    else if (name == "rounds") ok = absl::SimpleAtoi(value, &f->rounds) && f->rounds > 0;
    else if (name == "streams") ok = absl::SimpleAtoi(value, &f->streams) && f->streams > 0;
    else if (name == "channels") ok = absl::SimpleAtoi(value, &f->channels) && f->channels > 0;
    else if (name == "publishes") ok = absl::SimpleAtoi(value, &f->publishes) && f->publishes >= 0;
    else if (name == "solver") f->solver = value;
    else if (name == "ratio") ok = absl::SimpleAtod(value, &f->ratio) && f->ratio >= 1;
    else if (name == "publish_every") ok = absl::SimpleAtod(value, &f->publish_every) && f->publish_every > 0;
    else if (name == "calls") ok = absl::SimpleAtoi(value, &f->calls) && f->calls > 0;
    else if (name == "min_qps") ok = absl::SimpleAtod(value, &f->min_qps) && f->min_qps >= 0;
    else if (name == "cold_threads") ok = absl::SimpleAtoi(value, &f->cold_threads) && f->cold_threads > 0;
    else if (name == "table_ms") ok = absl::SimpleAtoi(value, &f->table_ms) && f->table_ms >= 0;
    else {
      std::fprintf(stderr, "router_bench: unknown flag --%s\n", name.c_str());
      return false;
    }
    if (!ok) {
      std::fprintf(stderr, "router_bench: bad value for --%s: '%s'\n", name.c_str(), value.c_str());
      return false;
    }
  }
  return f->mode == "throughput" || f->mode == "watch" || f->mode == "soak" || f->mode == "cold";
}

// The shipped model's shape with the default grid; `seed` varies the values.
SensitivityTable BenchTable(const std::string& model, int seed) {
  SensitivityTable t;
  t.model = model;
  t.num_layers = 12;
  t.num_kv_heads = 2;
  t.head_dim = 64;
  t.seq_len = 4096;
  t.compression_point = 3840;
  t.samples = 16;
  t.tuples = TupleGrid::Default().Tuples();
  for (int64_t l = 0; l < t.num_layers; ++l) {
    std::vector<double> row;
    for (const CompressionTuple& tu : t.tuples) {
      const double loss = (1 - tu.keep) * (1 + 0.5 * std::sin(l + seed)) +
                          (16.0 / tu.kbits - 1) * 0.02 * (1 + (l % 3)) +
                          (16.0 / tu.vbits - 1) * 0.01 * (1 + ((l + seed) % 4));
      row.push_back(loss * (tu.keep == 1 && tu.kbits == 16 && tu.vbits == 16 ? 0 : 1));
    }
    t.s.push_back(row);
  }
  return t;
}

// One table, no new versions.
class StaticTableSource final : public TableSource {
 public:
  explicit StaticTableSource(SensitivityTable table) : table_(std::move(table)) {}
  absl::StatusOr<registry::VersionedTable> GetTable(const std::string& model,
                                                    uint64_t version) override {
    if (model != table_.model || version > 1) return absl::NotFoundError("no such table");
    return registry::VersionedTable{1, "bench", table_};
  }
  absl::StatusOr<uint64_t> WaitForVersion(const std::string&, uint64_t,
                                          absl::Duration timeout) override {
    absl::SleepFor(timeout);
    return absl::DeadlineExceededError("no new version");
  }

 private:
  SensitivityTable table_;
};

// Any version of one table, each GetTable taking `delay` (a registry call);
// the latest is version 1 and no new one lands.
class SlowTableSource final : public TableSource {
 public:
  SlowTableSource(SensitivityTable table, absl::Duration delay)
      : table_(std::move(table)), delay_(delay) {}
  absl::StatusOr<registry::VersionedTable> GetTable(const std::string& model,
                                                    uint64_t version) override {
    absl::SleepFor(delay_);
    if (model != table_.model) return absl::NotFoundError("no such model");
    return registry::VersionedTable{version == 0 ? 1 : version, "bench", table_};
  }
  absl::StatusOr<uint64_t> WaitForVersion(const std::string&, uint64_t,
                                          absl::Duration timeout) override {
    absl::SleepFor(timeout);
    return absl::DeadlineExceededError("no new version");
  }

 private:
  const SensitivityTable table_;
  const absl::Duration delay_;
};

// Same proto shape as the router; SolvePlan returns a fixed plan.
class NoopRouterService final : public v1::Router::CallbackService {
 public:
  explicit NoopRouterService(v1::Plan plan) : plan_(std::move(plan)) {}
  grpc::ServerUnaryReactor* SolvePlan(grpc::CallbackServerContext* context,
                                      const v1::SolvePlanRequest*, v1::Plan* response) override {
    *response = plan_;
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const v1::Plan plan_;
};

struct RoundResult {
  int64_t calls = 0;
  int64_t errors = 0;
  double seconds = 0;
  double p50_us = 0, p99_us = 0;
  double qps() const { return calls / seconds; }
};

// Drives `address` with the flags' load; latencies of calls that complete
// inside the measured window (after a 1 s warm-up). With flags.calls > 0:
// exactly that many calls, all of them counted (seconds = the wall time they
// took), and `completed` (if given) counts them as they finish.
RoundResult RunLoad(const std::string& address, const v1::SolvePlanRequest& request,
                    const Flags& flags, int round_id,
                    std::atomic<int64_t>* completed = nullptr) {
  using Clock = std::chrono::steady_clock;
  struct Call {
    grpc::ClientContext context;
    v1::Plan reply;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::Plan>> rpc;
    Clock::time_point start;
  };
  const bool counted = flags.calls > 0;
  const auto load_start = Clock::now();
  const auto warm_end = counted ? load_start : load_start + std::chrono::seconds(1);
  const auto end = counted ? Clock::time_point::max()
                           : warm_end + std::chrono::microseconds(static_cast<int64_t>(flags.seconds * 1e6));
  std::atomic<int64_t> issued{0};
  // Whether one more call may start: before `end`, or (counted) while fewer
  // than flags.calls were issued.
  auto may_issue = [&](Clock::time_point now) {
    return counted ? issued.fetch_add(1) < flags.calls : now < end;
  };
  std::vector<std::vector<float>> latencies(flags.threads);
  std::vector<int64_t> errors(flags.threads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < flags.threads; ++t) {
    threads.emplace_back([&, t] {
      grpc::ChannelArguments args;
      args.SetInt("moend.bench.channel", round_id * 1000 + t);  // own connection
      auto stub = v1::Router::NewStub(
          grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
      grpc::CompletionQueue cq;
      auto issue = [&] {
        auto* call = new Call;
        call->start = Clock::now();
        call->rpc = stub->AsyncSolvePlan(&call->context, request, &cq);
        call->rpc->Finish(&call->reply, &call->status, call);
      };
      int in_flight = 0;
      for (int i = 0; i < flags.depth && may_issue(Clock::now()); ++i, ++in_flight) issue();
      void* tag;
      bool ok;
      while (in_flight > 0 && cq.Next(&tag, &ok)) {
        auto* call = static_cast<Call*>(tag);
        const auto now = Clock::now();
        --in_flight;
        if (now >= warm_end && now < end) {
          if (call->status.ok()) {
            latencies[t].push_back(
                std::chrono::duration<float, std::micro>(now - call->start).count());
          } else {
            ++errors[t];
          }
        }
        delete call;
        if (completed != nullptr) ++*completed;
        if (may_issue(now)) {
          issue();
          ++in_flight;
        }
      }
      cq.Shutdown();
      while (cq.Next(&tag, &ok)) {
      }
    });
  }
  for (auto& th : threads) th.join();
  std::vector<float> all;
  RoundResult r;
  for (int t = 0; t < flags.threads; ++t) {
    all.insert(all.end(), latencies[t].begin(), latencies[t].end());
    r.errors += errors[t];
  }
  std::sort(all.begin(), all.end());
  r.calls = static_cast<int64_t>(all.size()) + (counted ? r.errors : 0);
  r.seconds = counted ? std::chrono::duration<double>(Clock::now() - load_start).count()
                      : flags.seconds;
  if (!all.empty()) {
    r.p50_us = all[all.size() / 2];
    r.p99_us = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  return r;
}

// The real Router over `source` and its gRPC server on loopback, with the
// plan cache warmed for the flags' request (model tinycode).
struct InProcessRouter {
  std::unique_ptr<Router> router;
  std::unique_ptr<RouterServer> server;
  v1::SolvePlanRequest request;  // the warm request
  PlanPtr plan;                  // its plan
  absl::Duration cold;           // how long warming took (table fetch + solve)
};

absl::StatusOr<InProcessRouter> StartInProcess(TableSource* source, const Flags& flags) {
  InProcessRouter r;
  MOEND_ASSIGN_OR_RETURN(r.router,
                         Router::Create({.tables = source, .watch_poll = absl::Milliseconds(200)}));
  MOEND_ASSIGN_OR_RETURN(r.server, RouterServer::Start(r.router.get(), {}));
  r.request.set_model("tinycode");
  r.request.mutable_budget()->set_ratio(flags.ratio);
  r.request.set_solver(flags.solver);
  const absl::Time start = absl::Now();
  MOEND_ASSIGN_OR_RETURN(r.plan, r.router->SolvePlan({.model = "tinycode",
                                                      .budget = Budget::Ratio(flags.ratio),
                                                      .solver = flags.solver}));
  r.cold = absl::Now() - start;
  return r;
}

int RunThroughput(const Flags& flags) {
  StaticTableSource source(BenchTable("tinycode", 1));
  absl::StatusOr<InProcessRouter> started = StartInProcess(&source, flags);
  if (!started.ok()) return std::fprintf(stderr, "%s\n", started.status().ToString().c_str()), 1;
  const std::unique_ptr<RouterServer>& server = started->server;
  const v1::SolvePlanRequest& request = started->request;
  const absl::Duration cold = started->cold;
  // The no-op service returns the same plan.
  const v1::Plan fixed = ToProto(*started->plan);

  NoopRouterService noop(fixed);
  grpc::ServerBuilder builder;
  int noop_port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &noop_port);
  builder.RegisterService(&noop);
  std::unique_ptr<grpc::Server> noop_server = builder.BuildAndStart();
  if (!noop_server || noop_port == 0) return std::fprintf(stderr, "no-op server failed\n"), 1;
  const std::string noop_address = absl::StrCat("127.0.0.1:", noop_port);

  std::printf("router_bench throughput: %d client threads x %d in flight, %.1f s per round "
              "(after 1 s warm-up), %d rounds each, loopback\n",
              flags.threads, flags.depth, flags.seconds, flags.rounds);
  std::printf("request: model tinycode (12 layers, 112 tuples), ratio %g, solver %s; "
              "response %zu bytes\n",
              flags.ratio, flags.solver.c_str(), fixed.ByteSizeLong());
  std::printf("cold SolvePlan in-process (table fetch + solve, before the runs): %.3f ms\n",
              absl::ToDoubleMilliseconds(cold));
  std::printf("%-8s %5s %10s %10s %10s %8s\n", "service", "round", "QPS", "p50 us", "p99 us",
              "errors");
  double router_calls = 0, noop_calls = 0;
  int round_id = 0;
  for (int round = 0; round < flags.rounds; ++round) {
    for (const bool is_router : {false, true}) {
      RoundResult r = RunLoad(is_router ? server->address() : noop_address, request, flags,
                              ++round_id);
      (is_router ? router_calls : noop_calls) += r.calls;
      std::printf("%-8s %5d %10.0f %10.1f %10.1f %8lld\n", is_router ? "router" : "no-op",
                  round + 1, r.qps(), r.p50_us, r.p99_us, static_cast<long long>(r.errors));
      std::fflush(stdout);
    }
  }
  std::printf("ratio router/no-op throughput: %.3f\n", router_calls / noop_calls);
  noop_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server->Shutdown();
  return 0;
}

int RunCold(const Flags& flags) {
  SlowTableSource source(BenchTable("tinycode", 1), absl::Milliseconds(flags.table_ms));
  absl::StatusOr<InProcessRouter> started = StartInProcess(&source, flags);
  if (!started.ok()) return std::fprintf(stderr, "%s\n", started.status().ToString().c_str()), 1;
  const std::unique_ptr<RouterServer>& server = started->server;
  const v1::SolvePlanRequest& warm = started->request;

  std::printf("router_bench cold: warm load %d client threads x %d in flight, %.1f s per round "
              "(after 1 s warm-up), %d rounds each; cold load %d clients x 1 in flight, "
              "GetTable %d ms + solve each; model tinycode (12 layers, 112 tuples), ratio %g, "
              "solver %s, loopback\n",
              flags.threads, flags.depth, flags.seconds, flags.rounds, flags.cold_threads,
              flags.table_ms, flags.ratio, flags.solver.c_str());
  std::printf("%-10s %5s %10s %10s %10s %8s %12s\n", "warm load", "round", "QPS", "p50 us",
              "p99 us", "errors", "cold calls");
  double sum[2][3] = {};  // [with cold][qps, p50, p99]
  int round_id = 0;
  std::atomic<uint64_t> next_version{2};
  for (int round = 0; round < flags.rounds; ++round) {
    for (const bool with_cold : {false, true}) {
      std::atomic<bool> stop{false};
      std::atomic<int64_t> cold_calls{0}, cold_errors{0};
      std::vector<std::thread> cold;
      for (int t = 0; with_cold && t < flags.cold_threads; ++t) {
        cold.emplace_back([&, t] {
          grpc::ChannelArguments args;
          args.SetInt("moend.bench.cold", round * 1000 + t);  // own connection
          auto stub = v1::Router::NewStub(grpc::CreateCustomChannel(
              server->address(), grpc::InsecureChannelCredentials(), args));
          while (!stop) {
            v1::SolvePlanRequest request = warm;
            request.set_table_version(next_version++);
            grpc::ClientContext context;
            context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
            v1::Plan reply;
            (stub->SolvePlan(&context, request, &reply).ok() ? cold_calls : cold_errors)++;
          }
        });
      }
      RoundResult r = RunLoad(server->address(), warm, flags, ++round_id);
      stop = true;
      for (auto& th : cold) th.join();
      sum[with_cold][0] += r.qps();
      sum[with_cold][1] += r.p50_us;
      sum[with_cold][2] += r.p99_us;
      std::string cold_text = "-";
      if (with_cold) {
        cold_text = absl::StrCat(cold_calls.load(), " (", cold_errors.load(), " errors)");
      }
      std::printf("%-10s %5d %10.0f %10.1f %10.1f %8lld %12s\n", with_cold ? "+cold" : "alone",
                  round + 1, r.qps(), r.p50_us, r.p99_us, static_cast<long long>(r.errors),
                  cold_text.c_str());
      std::fflush(stdout);
    }
  }
  std::printf("warm with cold / warm alone: QPS %.3f, p50 %.3f, p99 %.3f\n",
              sum[1][0] / sum[0][0], sum[1][1] / sum[0][1], sum[1][2] / sum[0][2]);
  server->Shutdown();
  return 0;
}

// --- watch mode ---

struct ProcStatus {
  int64_t rss_kb = 0;
  int64_t threads = 0;
};

ProcStatus ReadProcStatus(pid_t pid) {
  ProcStatus s;
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) absl::SimpleAtoi(line.substr(6, line.size() - 9), &s.rss_kb);
    if (line.rfind("Threads:", 0) == 0) absl::SimpleAtoi(line.substr(8), &s.threads);
  }
  return s;
}

// Counts, per version, streams whose newest plan has that version.
class Tally {
 public:
  void Move(uint64_t from, uint64_t to) {
    absl::MutexLock lock(&mu_);
    if (to >= count_.size()) count_.resize(to + 1, 0);
    if (from > 0) --count_[from];
    ++count_[to];
  }
  void Remove(uint64_t from) {
    absl::MutexLock lock(&mu_);
    if (from > 0) --count_[from];
  }
  // Waits until `n` streams hold version `v`; false after `timeout`.
  bool WaitFor(uint64_t v, int64_t n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto done = [&] { return v < count_.size() && count_[v] >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  }

 private:
  absl::Mutex mu_;
  std::vector<int64_t> count_;
};

// A WatchPlans stream; one that ends before Cancel() adds to `ended` (if given).
class StreamReader final : public grpc::ClientReadReactor<v1::Plan> {
 public:
  StreamReader(v1::Router::Stub* stub, const v1::WatchPlansRequest& request, Tally* tally,
               std::atomic<int64_t>* ended = nullptr)
      : tally_(tally), ended_(ended) {
    stub->async()->WatchPlans(&context_, &request, this);
    StartRead(&plan_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    tally_->Move(version_, plan_.version());
    version_ = plan_.version();
    StartRead(&plan_);
  }
  void OnDone(const grpc::Status&) override {
    tally_->Remove(version_);
    if (ended_ != nullptr && !cancelled_) ++*ended_;
    absl::MutexLock lock(&mu_);
    done_ = true;
  }
  void Cancel() {
    cancelled_ = true;
    context_.TryCancel();
  }
  void WaitDone() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
  }

 private:
  grpc::ClientContext context_;
  v1::Plan plan_;
  Tally* tally_;
  std::atomic<int64_t>* ended_;
  std::atomic<bool> cancelled_{false};
  uint64_t version_ = 0;
  absl::Mutex mu_;
  bool done_ = false;
};

// moend-registry (temporary database, the shipped model registered, one
// table published) and moend-router in front of it, as child processes.
class Stack {
 public:
  // Empty on success, else what failed.
  std::string Start() {
    char dir_template[] = "/tmp/router-bench-XXXXXX";
    dir_ = ::mkdtemp(dir_template);
    registry_ = std::make_unique<testing::ChildProcess>(
        MOEND_REGISTRY_BIN, std::vector<std::string>{"--db", dir_ + "/db", "--listen", "127.0.0.1:0"});
    const std::string registry_address = registry_->WaitForLine("listening on ", absl::Seconds(30));
    if (registry_address.empty()) return registry_->output();
    auto client = registry::RegistryClient::Connect({.target = registry_address});
    if (!client.ok()) return client.status().ToString();
    client_ = std::move(client).value();
    auto model = client_->RegisterModelFromFile(
        "tinycode", std::string(MOEND_SOURCE_DIR) + "/models/tinycode/config.json");
    if (!model.ok()) return model.status().ToString();
    if (Publish() == 0) return "publishing the first table failed";
    router_ = std::make_unique<testing::ChildProcess>(
        MOEND_ROUTER_BIN, std::vector<std::string>{"--registry", registry_address, "--listen",
                                                   "127.0.0.1:0", "--metrics", "127.0.0.1:0"});
    router_address_ = router_->WaitForLine("listening on ", absl::Seconds(30));
    if (router_address_.empty()) return router_->output();
    const std::string metrics = router_->WaitForLine("metrics on http://", absl::Seconds(30));
    metrics_ = metrics.substr(0, metrics.find('/'));
    return "";
  }
  ~Stack() {
    if (router_) router_->Signal(SIGTERM, absl::Seconds(30));
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  // Publishes the next table; its version (0 on failure).
  uint64_t Publish() {
    auto published = client_->PublishTable(BenchTable("tinycode", static_cast<int>(version_) + 1));
    if (!published.ok()) return 0;
    return version_ = *published;
  }
  uint64_t version() const { return version_; }
  const std::string& router_address() const { return router_address_; }
  pid_t router_pid() const { return router_->pid(); }
  pid_t registry_pid() const { return registry_->pid(); }

  // The router's moend_router_watch_streams gauge, or -1.
  int64_t WatchStreams() const {
    const std::string scrape = testing::HttpGet(metrics_, "/metrics");
    const std::string key = "\nmoend_router_watch_streams ";
    const size_t at = scrape.find(key);
    if (at == std::string::npos) return -1;
    double v = -1;
    const size_t end = scrape.find('\n', at + key.size());
    if (!absl::SimpleAtod(scrape.substr(at + key.size(), end - at - key.size()), &v)) return -1;
    return static_cast<int64_t>(v);
  }

 private:
  std::string dir_;
  std::unique_ptr<testing::ChildProcess> registry_, router_;
  std::unique_ptr<registry::RegistryClient> client_;
  std::string router_address_, metrics_;
  uint64_t version_ = 0;
};

std::vector<std::unique_ptr<v1::Router::Stub>> Stubs(const std::string& address, int channels) {
  std::vector<std::unique_ptr<v1::Router::Stub>> stubs;
  for (int c = 0; c < channels; ++c) {
    grpc::ChannelArguments args;
    args.SetInt("moend.bench.channel", c);  // own connection
    stubs.push_back(v1::Router::NewStub(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args)));
  }
  return stubs;
}

int RunWatch(const Flags& flags) {
  Stack stack;
  if (std::string error = stack.Start(); !error.empty()) {
    return std::fprintf(stderr, "%s\n", error.c_str()), 1;
  }
  uint64_t version = stack.version();
  const std::string router_address = stack.router_address();
  auto watch_streams = [&] { return stack.WatchStreams(); };
  std::vector<std::unique_ptr<v1::Router::Stub>> stubs = Stubs(router_address, flags.channels);
  v1::WatchPlansRequest request;
  request.set_model("tinycode");
  request.mutable_budget()->set_ratio(flags.ratio);
  request.set_solver(flags.solver);

  // Warm: one SolvePlan, so the idle figure includes the model's watcher.
  {
    v1::SolvePlanRequest solve;
    solve.set_model("tinycode");
    *solve.mutable_budget() = request.budget();
    solve.set_solver(flags.solver);
    grpc::ClientContext ctx;
    v1::Plan plan;
    grpc::Status s = stubs[0]->SolvePlan(&ctx, solve, &plan);
    if (!s.ok()) return std::fprintf(stderr, "SolvePlan: %s\n", s.error_message().c_str()), 1;
  }
  const pid_t pid = stack.router_pid();
  auto report = [&](const std::string& what) {
    ProcStatus s = ReadProcStatus(pid);
    std::printf("%-58s RSS %6.1f MiB  threads %3lld  watch_streams %5lld\n", what.c_str(),
                s.rss_kb / 1024.0, static_cast<long long>(s.threads),
                static_cast<long long>(watch_streams()));
    std::fflush(stdout);
  };
  std::printf("router_bench watch: %d WatchPlans streams over %d connections to moend-router "
              "(pid %d), ratio %g, solver %s\n",
              flags.streams, flags.channels, pid, flags.ratio, flags.solver.c_str());
  report("idle (1 model watched, plan cached)");

  const absl::Duration patience = absl::Seconds(120);
  for (int cycle = 1; cycle <= 2; ++cycle) {
    Tally tally;
    std::vector<std::unique_ptr<StreamReader>> readers;
    const absl::Time open_start = absl::Now();
    for (int i = 0; i < flags.streams; ++i) {
      readers.push_back(
          std::make_unique<StreamReader>(stubs[i % flags.channels].get(), request, &tally));
    }
    if (!tally.WaitFor(version, flags.streams, patience)) {
      return std::fprintf(stderr, "not every stream got its first plan\n"), 1;
    }
    report(absl::StrFormat("cycle %d: %d streams open, first plan in (%.0f ms)", cycle,
                           flags.streams, absl::ToDoubleMilliseconds(absl::Now() - open_start)));
    for (int p = 0; p < flags.publishes; ++p) {
      const absl::Time start = absl::Now();
      version = stack.Publish();
      if (version == 0) return std::fprintf(stderr, "publish failed\n"), 1;
      if (!tally.WaitFor(version, flags.streams, patience)) {
        return std::fprintf(stderr, "not every stream got version %llu\n",
                            static_cast<unsigned long long>(version)), 1;
      }
      report(absl::StrFormat("cycle %d: version %llu on all streams (%.0f ms after publish)",
                             cycle, static_cast<unsigned long long>(version),
                             absl::ToDoubleMilliseconds(absl::Now() - start)));
    }
    for (auto& r : readers) r->Cancel();
    for (auto& r : readers) r->WaitDone();
    readers.clear();
    const absl::Time closing = absl::Now();
    while (watch_streams() != 0 && absl::Now() - closing < patience) {
      absl::SleepFor(absl::Milliseconds(20));  // the router runs OnDone for each
    }
    report(absl::StrFormat("cycle %d: all streams closed", cycle));
  }
  return 0;
}

// --- soak mode ---
// The reliability suite's load: SolvePlan at full rate (--threads x --depth
// in flight) for --seconds while --streams WatchPlans streams stay open and a
// new table lands every --publish_every seconds; every stream must receive
// every version. Prints errors, p50/p99, propagation times and both servers'
// RSS before and after; exits 1 if any call failed, any stream missed a
// version, or the router's RSS grew by more than max(25%, 32 MiB). With
// --calls: a fixed amount of work instead (see the top of this file); every
// failed call, failed publish and stream that ended early is an error, and a
// rate below --min_qps fails the run.
int RunSoak(const Flags& flags) {
  Stack stack;
  if (std::string error = stack.Start(); !error.empty()) {
    return std::fprintf(stderr, "%s\n", error.c_str()), 1;
  }
  std::vector<std::unique_ptr<v1::Router::Stub>> stubs = Stubs(stack.router_address(), flags.channels);
  v1::WatchPlansRequest watch;
  watch.set_model("tinycode");
  watch.mutable_budget()->set_ratio(flags.ratio);
  watch.set_solver(flags.solver);
  v1::SolvePlanRequest solve;
  solve.set_model("tinycode");
  solve.mutable_budget()->set_ratio(flags.ratio);
  solve.set_solver(flags.solver);

  const absl::Duration patience = absl::Seconds(120);
  Tally tally;
  std::atomic<int64_t> streams_ended{0};
  std::vector<std::unique_ptr<StreamReader>> readers;
  for (int i = 0; i < flags.streams; ++i) {
    readers.push_back(std::make_unique<StreamReader>(stubs[i % flags.channels].get(), watch, &tally,
                                                     &streams_ended));
  }
  if (!tally.WaitFor(stack.version(), flags.streams, patience)) {
    return std::fprintf(stderr, "not every stream got its first plan\n"), 1;
  }
  // A short warm-up round (connections, plan cache), then the "before" RSS.
  Flags warm = flags;
  warm.seconds = 1;
  warm.calls = flags.calls > 0 ? std::max<int64_t>(1, flags.calls / 20) : 0;
  const RoundResult warm_load = RunLoad(stack.router_address(), solve, warm, 0);
  const ProcStatus router_before = ReadProcStatus(stack.router_pid());
  const ProcStatus registry_before = ReadProcStatus(stack.registry_pid());
  const bool counted = flags.calls > 0;
  if (counted) {
    std::printf("router_bench soak: %lld SolvePlan calls (%d threads x %d in flight) + %d "
                "WatchPlans streams over %d connections, %d new tables during the load; ratio %g, "
                "solver %s\n",
                static_cast<long long>(flags.calls), flags.threads, flags.depth, flags.streams,
                flags.channels, flags.publishes, flags.ratio, flags.solver.c_str());
  } else {
    std::printf("router_bench soak: %.0f s of SolvePlan (%d threads x %d in flight) + %d WatchPlans "
                "streams over %d connections, a new table every %.1f s; ratio %g, solver %s\n",
                flags.seconds, flags.threads, flags.depth, flags.streams, flags.channels,
                flags.publish_every, flags.ratio, flags.solver.c_str());
  }
  std::fflush(stdout);

  // New calibrations land while the load runs; each must reach every stream.
  std::atomic<bool> stop{false};
  std::atomic<int64_t> publishes{0}, missed{0};
  std::atomic<double> worst_propagation_ms{0};
  std::atomic<int64_t> completed{0};
  std::thread publisher([&] {
    for (int p = 1; !stop && (!counted || p <= flags.publishes); ++p) {
      if (counted) {  // at evenly spaced call counts
        const int64_t at = flags.calls * p / (flags.publishes + 1);
        while (!stop && completed < at) absl::SleepFor(absl::Milliseconds(2));
      } else {
        const absl::Time next = absl::Now() + absl::Seconds(flags.publish_every);
        while (!stop && absl::Now() < next) absl::SleepFor(absl::Milliseconds(50));
      }
      if (stop) break;
      const absl::Time start = absl::Now();
      const uint64_t version = stack.Publish();
      if (version == 0 || !tally.WaitFor(version, flags.streams, patience)) {
        ++missed;
        continue;
      }
      ++publishes;
      const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
      if (ms > worst_propagation_ms) worst_propagation_ms = ms;
    }
  });
  const RoundResult load = RunLoad(stack.router_address(), solve, flags, 1, &completed);
  if (counted) {  // the publishes due at the last call counts still land
    while (publishes + missed < flags.publishes && !stop) absl::SleepFor(absl::Milliseconds(10));
  }
  stop = true;
  publisher.join();
  const bool all_current = tally.WaitFor(stack.version(), flags.streams, patience);
  const ProcStatus router_after = ReadProcStatus(stack.router_pid());
  const ProcStatus registry_after = ReadProcStatus(stack.registry_pid());
  for (auto& r : readers) r->Cancel();
  for (auto& r : readers) r->WaitDone();

  std::printf("SolvePlan: %lld calls in %.1f s = %.0f QPS, errors %lld (warm-up: %lld calls, %lld "
              "errors), p50 %.1f us, p99 %.1f us\n",
              static_cast<long long>(load.calls), load.seconds, load.qps(),
              static_cast<long long>(load.errors), static_cast<long long>(warm_load.calls),
              static_cast<long long>(warm_load.errors), load.p50_us, load.p99_us);
  std::printf("tables published during the load: %lld, each on all %d streams within %.0f ms "
              "(worst); missed: %lld; streams on the last version at the end: %s\n",
              static_cast<long long>(publishes.load()), flags.streams, worst_propagation_ms.load(),
              static_cast<long long>(missed.load()), all_current ? "all" : "NOT all");
  std::printf("moend-router RSS %.1f -> %.1f MiB, threads %lld -> %lld\n",
              router_before.rss_kb / 1024.0, router_after.rss_kb / 1024.0,
              static_cast<long long>(router_before.threads),
              static_cast<long long>(router_after.threads));
  std::printf("moend-registry RSS %.1f -> %.1f MiB, threads %lld -> %lld\n",
              registry_before.rss_kb / 1024.0, registry_after.rss_kb / 1024.0,
              static_cast<long long>(registry_before.threads),
              static_cast<long long>(registry_after.threads));
  const int64_t growth_kb = router_after.rss_kb - router_before.rss_kb;
  const bool flat = growth_kb <= std::max<int64_t>(router_before.rss_kb / 4, 32 * 1024);
  const bool all_calls = !counted || load.calls == flags.calls;
  const bool all_published = !counted || publishes == flags.publishes;
  const bool fast_enough = load.qps() >= flags.min_qps;
  std::printf("streams that ended during the load: %lld; calls %s; %s--min_qps %.0f\n",
              static_cast<long long>(streams_ended.load()),
              all_calls ? "all made" : "NOT all made", fast_enough ? "" : "BELOW ", flags.min_qps);
  const bool ok = load.errors == 0 && warm_load.errors == 0 && load.calls > 0 && missed == 0 &&
                  all_current && flat && streams_ended == 0 && all_calls && all_published &&
                  fast_enough;
  std::printf("SOAK %s\n", ok ? "PASSED" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace moend::router

int main(int argc, char** argv) {
  moend::router::Flags flags;
  if (!moend::router::ParseFlags(argc, argv, &flags)) {
    std::fprintf(stderr,
                 "usage: router_bench [--mode=throughput|watch|soak|cold] [--threads=4] [--depth=8] "
                 "[--seconds=5] [--rounds=2] [--streams=1000] [--channels=10] "
                 "[--publishes=5] [--publish_every=5] [--solver=exact] [--ratio=8] "
                 "[--calls=N] [--min_qps=Q] [--cold_threads=8] [--table_ms=50]\n");
    return 2;
  }
  if (flags.mode == "soak") return moend::router::RunSoak(flags);
  if (flags.mode == "cold") return moend::router::RunCold(flags);
  return flags.mode == "watch" ? moend::router::RunWatch(flags)
                               : moend::router::RunThroughput(flags);
}

// Fuzzes the request handling of moend.v1.Router: the first byte picks
// SolvePlan (even) or WatchPlans (odd), the rest is the request message in
// protobuf wire format (inputs that do not parse are skipped). The handlers
// run on gRPC's callback API, whose reactors need a live call, so this target
// runs exactly what they run between the request and the reply:
//
//   SolvePlan:  BudgetFromProto -> Router::SolvePlan -> ToProto(plan)
//   WatchPlans: BudgetFromProto -> Router::WatchPlans (first plan written
//               with ToProto from the callback) -> unsubscribe
//
// over one Router per process whose table source holds the shipped model
// "tinycode" (version 1 = data/tables/tinycode_calibration_4096x16.json,
// version 2 = the same table on a smaller tuple grid). Every field of
// SolvePlanRequest and WatchPlansRequest reaches the server's code. The plan
// cache holds one entry, so every new input is solved.
//
// Checks: a plan the router returns is valid (Plan::Validate), fits its
// budget, and converts to a message that PlanFromProto (what clients run)
// accepts; an error is never INTERNAL/UNKNOWN and always has a message.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/compression.h"
#include "core/sensitivity_table.h"
#include "fuzz/fuzz_util.h"
#include "google/protobuf/stubs/logging.h"
#include "moend/v1/router.pb.h"
#include "services/router/plan_convert.h"
#include "services/router/router.h"
#include "services/router/table_source.h"

namespace moend::router {
namespace {

constexpr char kModel[] = "tinycode";

// Versions of each model's table in memory; no new versions ever land.
class StaticTableSource final : public TableSource {
 public:
  void Add(const SensitivityTable& table) { tables_[table.model].push_back(table); }

  absl::StatusOr<registry::VersionedTable> GetTable(const std::string& model,
                                                    uint64_t version) override {
    auto it = tables_.find(model);
    if (it == tables_.end()) {
      return absl::NotFoundError(absl::StrCat("model '", model, "' is not registered"));
    }
    const auto& versions = it->second;
    if (version == 0) version = versions.size();
    if (version > versions.size()) {
      return absl::NotFoundError(
          absl::StrCat("model '", model, "' has no table version ", version));
    }
    return registry::VersionedTable{version, absl::StrCat("run-", version),
                                    versions[version - 1]};
  }

  absl::StatusOr<uint64_t> WaitForVersion(const std::string& model, uint64_t after_version,
                                          absl::Duration timeout) override {
    absl::SleepFor(timeout);
    return absl::DeadlineExceededError("no newer version");
  }

 private:
  std::map<std::string, std::vector<SensitivityTable>> tables_;  // written before use only
};

SensitivityTable ShippedTable() {
  auto table = SensitivityTableFromJson(
      fuzz::ReadSourceFile("data/tables/tinycode_calibration_4096x16.json"));
  FUZZ_CHECK(table.ok(), "reading the shipped table: " + table.status().ToString());
  return *table;
}

// Version 2: every fourth tuple of the shipped grid (always with (1,16,16)).
SensitivityTable SmallGridTable() {
  SensitivityTable t = ShippedTable();
  SensitivityTable small = t;
  small.tuples.clear();
  for (auto& row : small.s) row.clear();
  for (size_t i = 0; i < t.tuples.size(); i += 4) {
    small.tuples.push_back(t.tuples[i]);
    for (size_t l = 0; l < t.s.size(); ++l) small.s[l].push_back(t.s[l][i]);
  }
  return small;
}

Router& TheRouter() {
  static Router* router = [] {
    auto* source = new StaticTableSource();
    source->Add(ShippedTable());
    source->Add(SmallGridTable());
    RouterOptions options;
    options.tables = source;
    options.plan_cache_entries = 1;
    options.table_cache_entries = 4;
    options.watch_poll = absl::Milliseconds(200);
    auto created = Router::Create(options);
    FUZZ_CHECK(created.ok(), "Router::Create: " + created.status().ToString());
    return created->release();
  }();
  return *router;
}

void CheckError(const absl::Status& s) {
  FUZZ_CHECK(!s.message().empty(), absl::StrCat("error ", s.code(), " without a message"));
  FUZZ_CHECK(s.code() != absl::StatusCode::kInternal && s.code() != absl::StatusCode::kUnknown,
             "a request error reported as a server fault: " + s.ToString());
}

// What a plan the router hands out must satisfy.
void CheckPlan(const VersionedPlan& plan, const Budget& budget) {
  const absl::Status valid = plan.plan.Validate();
  FUZZ_CHECK(valid.ok(), "the router returned an invalid plan: " + valid.ToString());
  FUZZ_CHECK(plan.plan.model == kModel, "plan of another model");
  if (budget.kind == Budget::Kind::kBytes) {
    FUZZ_CHECK(plan.plan.total_bytes <= budget.bytes, "plan over its byte budget");
  }
  const v1::Plan message = ToProto(plan);
  std::string wire;
  FUZZ_CHECK(message.SerializeToString(&wire), "the plan message does not serialize");
  v1::Plan parsed;
  FUZZ_CHECK(parsed.ParseFromString(wire), "the plan message does not parse back");
  auto back = PlanFromProto(parsed);
  FUZZ_CHECK(back.ok(), "clients reject the router's plan: " + back.status().ToString());
  FUZZ_CHECK(back->plan == plan.plan, "the plan changed on the wire");
}

template <typename Request>
bool ParseRequest(std::string_view bytes, Request* req) {
  return req->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
}

void SolvePlan(std::string_view bytes) {
  v1::SolvePlanRequest req;
  if (!ParseRequest(bytes, &req)) return;
  absl::StatusOr<Budget> budget = BudgetFromProto(req.budget());
  if (!budget.ok()) return CheckError(budget.status());
  absl::StatusOr<PlanPtr> plan =
      TheRouter().SolvePlan({req.model(), *budget, req.solver(), req.table_version()});
  if (!plan.ok()) return CheckError(plan.status());
  CheckPlan(**plan, *budget);
}

void WatchPlans(std::string_view bytes) {
  v1::WatchPlansRequest req;
  if (!ParseRequest(bytes, &req)) return;
  absl::StatusOr<Budget> budget = BudgetFromProto(req.budget());
  if (!budget.ok()) return CheckError(budget.status());
  int plans = 0;
  auto subscription = TheRouter().WatchPlans({req.model(), *budget, req.solver()},
                                             [&](PlanPtr plan) {
                                               ++plans;
                                               CheckPlan(*plan, *budget);
                                             });
  if (!subscription.ok()) return CheckError(subscription.status());
  FUZZ_CHECK(plans == 1, absl::StrCat("WatchPlans delivered ", plans, " first plans"));
  subscription->reset();
}

std::string Seed(uint8_t selector, const google::protobuf::Message& m) {
  return std::string(1, static_cast<char>(selector)) + m.SerializeAsString();
}

std::vector<fuzz::Seed> MakeSeeds() {
  std::vector<fuzz::Seed> seeds;
  const char* solvers[] = {"", "greedy", "exact", "1d", "2d_uniform", "2d"};
  for (const char* solver : solvers) {
    v1::SolvePlanRequest req;
    req.set_model(kModel);
    req.set_solver(solver);
    req.mutable_budget()->set_ratio(8);
    seeds.push_back({absl::StrCat("solve_ratio8_", *solver ? solver : "default"), Seed(0, req)});
  }
  {
    v1::SolvePlanRequest req;
    req.set_model(kModel);
    req.set_solver("exact");
    req.set_table_version(2);
    req.mutable_budget()->set_bytes(600000);
    req.mutable_budget()->set_context(4096);
    seeds.push_back({"solve_bytes_v2_exact", Seed(0, req)});
    req.mutable_budget()->set_ratio(14);
    req.mutable_budget()->set_context(1024);
    req.set_table_version(1);
    seeds.push_back({"solve_ratio14_context1024", Seed(0, req)});
  }
  {
    v1::WatchPlansRequest req;
    req.set_model(kModel);
    req.set_solver("greedy");
    req.mutable_budget()->set_ratio(4);
    seeds.push_back({"watch_ratio4", Seed(1, req)});
    req.mutable_budget()->set_bytes(2000000);
    req.mutable_budget()->set_context(3840);
    req.set_solver("2d_uniform");
    seeds.push_back({"watch_bytes", Seed(1, req)});
  }
  return seeds;
}

}  // namespace
}  // namespace moend::router

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  moend::fuzz::MaybeWriteSeeds(*argc, *argv, moend::router::MakeSeeds);
  // Requests with invalid UTF-8 in string fields fail to parse (as in the
  // server) and are skipped; protobuf's log line for each is noise.
  google::protobuf::SetLogHandler(nullptr);
  moend::router::TheRouter();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    moend::router::SolvePlan(bytes);
  } else {
    moend::router::WatchPlans(bytes);
  }
  return 0;
}

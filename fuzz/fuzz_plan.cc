// Fuzzes PlanFromJson (core/plan.h): the input is a plan's JSON text. A plan
// it accepts passes Plan::Validate and survives a round trip through
// PlanToJson unchanged.
#include <cstdint>
#include <string>
#include <vector>

#include "core/plan.h"
#include "core/sensitivity_table.h"
#include "core/solver.h"
#include "fuzz/fuzz_util.h"

namespace {

// Plans the solvers make from a cut-down shipped table.
std::vector<moend::fuzz::Seed> MakeSeeds() {
  auto table = moend::SensitivityTableFromJson(moend::fuzz::TrimmedShippedTableJson(3, 1));
  FUZZ_CHECK(table.ok(), table.status().ToString());
  std::vector<moend::fuzz::Seed> seeds;
  const moend::SolverKind kinds[] = {moend::SolverKind::kGreedy, moend::SolverKind::kExact,
                                     moend::SolverKind::k1d, moend::SolverKind::k2dUniform};
  for (moend::SolverKind kind : kinds) {
    auto plan = moend::Solve(*table, moend::Budget::Ratio(6), kind);
    FUZZ_CHECK(plan.ok(), plan.status().ToString());
    plan->model = table->model;
    seeds.push_back({std::string("plan_ratio6_") + moend::SolverName(kind) + ".json",
                     moend::PlanToJson(*plan)});
  }
  auto plan = moend::Solve(*table, moend::Budget::Bytes(200000, 2048), moend::SolverKind::kExact);
  FUZZ_CHECK(plan.ok(), plan.status().ToString());
  plan->model = table->model;
  seeds.push_back({"plan_bytes_context2048.json", moend::PlanToJson(*plan)});
  return seeds;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  moend::fuzz::MaybeWriteSeeds(*argc, *argv, MakeSeeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto plan = moend::PlanFromJson(text);
  if (!plan.ok()) {
    FUZZ_CHECK(!plan.status().message().empty(), "an error without a message");
    return 0;
  }
  const absl::Status valid = plan->Validate();
  FUZZ_CHECK(valid.ok(), "accepted a plan that Validate rejects: " + valid.ToString());
  const std::string json = moend::PlanToJson(*plan);
  auto again = moend::PlanFromJson(json);
  FUZZ_CHECK(again.ok(), "its own JSON does not parse back: " + again.status().ToString());
  FUZZ_CHECK(*plan == *again, "round trip through JSON changed the plan");
  return 0;
}

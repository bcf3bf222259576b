// moendctl solve: a plan for a sensitivity table under a memory budget.
#include <cstdio>
#include <optional>
#include <string>

#include "absl/strings/str_format.h"
#include "core/flags.h"
#include "clients/moendctl/commands.h"
#include "clients/moendctl/output.h"
#include "core/plan.h"
#include "core/sensitivity_table.h"
#include "core/solver.h"

namespace moend::ctl {

namespace {

constexpr char kUsage[] =
    R"(usage: moendctl solve --table TABLE.json (--ratio R [--context N] | --budget-bytes B --context N)
                     [--solver NAME] [--units auto|layer|head] [--out PLAN.json] [--json]

Chooses one compression tuple per layer (or per (layer, KV head)) so that the
predicted error (sum of the table's sensitivities) is least within the memory
budget.

  --table FILE        sensitivity table JSON (moendctl calibrate writes one)
  --ratio R           budget = floor(full cache bytes at the context / R), R >= 1
  --budget-bytes B    budget in bytes of the compressed cache at --context
  --context N         tokens the cache holds; with --ratio it defaults to the
                      table's compression point
  --solver NAME       greedy (default), exact, 1d, 2d_uniform or 2d
  --units U           what takes one tuple: auto (default: per KV head for
                      greedy and exact when the table has s_head), layer, head
  --out FILE          write the plan JSON there
  --json              print the plan JSON on stdout instead of the table

Budgets count everything the cache holds (window, scales). Exit status: 0 ok,
1 the solve failed (e.g. the budget is below the smallest feasible plan, which
the message names), 2 bad usage.
)";

int Usage(const std::string& message) {
  std::fprintf(stderr, "moendctl solve: %s\n(moendctl solve --help for usage)\n",
               message.c_str());
  return kExitUsage;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "moendctl solve: %s\n", std::string(status.message()).c_str());
  return kExitFailure;
}

}  // namespace

int RunSolve(int argc, char** argv) {
  absl::StatusOr<Args> args =
      Args::Parse(argc, argv, {"table", "ratio", "budget-bytes", "context", "solver", "units", "out"},
                  {"json"});
  if (!args.ok()) return Usage(std::string(args.status().message()));
  if (args->help()) {
    std::fputs(kUsage, stdout);
    return kExitOk;
  }
  absl::StatusOr<std::string> table_path = args->Required("table");
  if (!table_path.ok()) return Usage(std::string(table_path.status().message()));

  const bool has_ratio = args->Has("ratio"), has_bytes = args->Has("budget-bytes");
  if (has_ratio == has_bytes) return Usage("give exactly one of --ratio and --budget-bytes");
  absl::StatusOr<int64_t> context = args->Int("context", 0);
  if (!context.ok()) return Usage(std::string(context.status().message()));
  if (args->Has("context") && *context <= 0) {
    return Usage(absl::StrFormat("--context %d must be > 0 tokens", *context));
  }
  Budget budget;
  if (has_ratio) {
    absl::StatusOr<double> ratio = args->Double("ratio", 0);
    if (!ratio.ok()) return Usage(std::string(ratio.status().message()));
    budget = Budget::Ratio(*ratio, *context);
  } else {
    if (!args->Has("context")) return Usage("--budget-bytes needs --context N");
    absl::StatusOr<int64_t> bytes = args->Int("budget-bytes", 0);
    if (!bytes.ok()) return Usage(std::string(bytes.status().message()));
    budget = Budget::Bytes(*bytes, *context);
  }
  if (absl::Status ok = budget.Validate(); !ok.ok()) return Usage(std::string(ok.message()));
  absl::StatusOr<SolverKind> kind = ParseSolverKind(args->Optional("solver").value_or("greedy"));
  if (!kind.ok()) return Usage(std::string(kind.status().message()));
  absl::StatusOr<SolveUnits> units = ParseSolveUnits(args->Optional("units").value_or("auto"));
  if (!units.ok()) return Usage(std::string(units.status().message()));

  absl::StatusOr<SensitivityTable> table = ReadSensitivityTable(*table_path);
  if (!table.ok()) return Fail(table.status());
  absl::StatusOr<Plan> plan = Solve(*table, budget, *kind, *units);
  if (!plan.ok()) return Fail(plan.status());
  if (std::optional<std::string> out = args->Optional("out")) {
    if (absl::Status written = WritePlan(*plan, *out); !written.ok()) return Fail(written);
  }
  if (args->Has("json")) {
    std::fputs(PlanToJson(*plan).c_str(), stdout);
  } else {
    PrintPlan(*plan);
  }
  return kExitOk;
}

}  // namespace moend::ctl

// `moendctl solve` end to end: the real binary on a table written to a
// temporary folder.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>

#include "core/file_util.h"
#include "core/plan.h"
#include "core/sensitivity_table.h"
#include "core/solver.h"

namespace moend {
namespace {

struct RunResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

class SolveCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("solve_cli_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    table_ = MakeTable();
    ASSERT_TRUE(WriteSensitivityTable(table_, Path("table.json")).ok());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  static SensitivityTable MakeTable() {
    SensitivityTable t;
    t.model = "tinycode";
    t.num_layers = 12;
    t.num_kv_heads = 2;
    t.head_dim = 64;
    t.seq_len = 4096;
    t.compression_point = 3840;
    t.samples = 16;
    t.tuples = TupleGrid::Default().Tuples();
    std::mt19937_64 rng(17);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (int l = 0; l < 12; ++l) {
      std::vector<double> row;
      for (const CompressionTuple& tu : t.tuples) {
        row.push_back((1.0 - tu.keep) * u(rng) + (16.0 / tu.kbits - 1) * 0.01 * u(rng) +
                      (16.0 / tu.vbits - 1) * 0.01 * u(rng));
      }
      t.s.push_back(row);
    }
    return t;
  }

  RunResult Run(const std::string& args) {
    const std::string out = Path("stdout.txt"), err = Path("stderr.txt");
    const std::string cmd =
        std::string(MOENDCTL_PATH) + " solve " + args + " >" + out + " 2>" + err;
    const int status = std::system(cmd.c_str());
    RunResult r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = ReadFile(out).value_or("");
    r.err = ReadFile(err).value_or("");
    return r;
  }

  std::filesystem::path dir_;
  SensitivityTable table_;
};

TEST_F(SolveCliTest, WritesTheSolverPlanAndPrintsATable) {
  const std::string table = Path("table.json"), plan_path = Path("plan.json");
  RunResult r = Run("--table " + table + " --ratio 14 --solver exact --out " + plan_path);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<Plan> plan = ReadPlan(plan_path);
  ASSERT_TRUE(plan.ok()) << plan.status();
  absl::StatusOr<Plan> want = Solve(table_, Budget::Ratio(14), SolverKind::kExact);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(*plan, *want);
  EXPECT_NE(r.out.find("solver exact"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(std::to_string(want->total_bytes)), std::string::npos) << r.out;
  // One row per layer after the three header lines.
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 3 + 12) << r.out;
}

// A table with per-head rows: solved per head by default (each per-head
// layer printed as its heads' tuples "(keep,kbits,vbits)/(...)"), per layer
// with --units layer.
TEST_F(SolveCliTest, PerHeadTablesGivePerHeadPlansUnlessUnitsLayer) {
  SensitivityTable heads = table_;
  for (int l = 0; l < 12; ++l) {
    std::vector<double> h0, h1;
    for (double v : heads.s[l]) {
      h0.push_back(v * 0.25);
      h1.push_back(v * 1.75);
    }
    heads.s_head.push_back({h0, h1});
  }
  heads.signals = {"code: test", "recall: test"};
  ASSERT_TRUE(WriteSensitivityTable(heads, Path("heads.json")).ok());
  const std::string plan_path = Path("plan.json");
  RunResult r = Run("--table " + Path("heads.json") + " --ratio 8 --out " + plan_path);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<Plan> plan = ReadPlan(plan_path);
  ASSERT_TRUE(plan.ok()) << plan.status();
  absl::StatusOr<Plan> want = Solve(heads, Budget::Ratio(8), SolverKind::kExact);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_EQ(want->HeadsPerLayer(), 2);
  EXPECT_EQ(*plan, *want);
  EXPECT_NE(r.out.find("heads (keep,kbits,vbits)"), std::string::npos) << r.out;
  for (const PlanLayer& layer : want->layers) {
    char expected[96];
    std::snprintf(expected, sizeof expected, "(%g,%d,%d)/(%g,%d,%d)\n", layer.heads[0].tuple.keep,
                  layer.heads[0].tuple.kbits, layer.heads[0].tuple.vbits, layer.heads[1].tuple.keep,
                  layer.heads[1].tuple.kbits, layer.heads[1].tuple.vbits);
    EXPECT_NE(r.out.find(expected), std::string::npos) << expected << " not in\n" << r.out;
  }
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 3 + 12) << r.out;

  r = Run("--table " + Path("heads.json") + " --ratio 8 --units layer --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  plan = PlanFromJson(r.out);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->HeadsPerLayer(), 0);
  // --units head needs s_head.
  r = Run("--table " + Path("table.json") + " --ratio 8 --units head");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.err.find("s_head"), std::string::npos) << r.err;
  r = Run("--table " + Path("table.json") + " --ratio 8 --units bogus");
  EXPECT_EQ(r.exit_code, 2) << r.out;
}

TEST_F(SolveCliTest, JsonOnStdoutAndDefaultSolverIsExact) {
  RunResult r = Run("--table " + Path("table.json") + " --budget-bytes 2000000 --context 4096 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<Plan> plan = PlanFromJson(r.out);
  ASSERT_TRUE(plan.ok()) << plan.status() << "\n" << r.out;
  EXPECT_EQ(plan->solver, "exact");
  EXPECT_EQ(plan->context, 4096);
  EXPECT_EQ(plan->budget_bytes, 2000000);
  EXPECT_LE(plan->total_bytes, 2000000);
}

TEST_F(SolveCliTest, InfeasibleBudgetFailsNamingTheMinimum) {
  RunResult r = Run("--table " + Path("table.json") + " --budget-bytes 1000 --context 3840 --solver exact");
  EXPECT_EQ(r.exit_code, 1);
  absl::StatusOr<Plan> any = Solve(table_, Budget::Bytes(1000, 3840), SolverKind::kExact);
  ASSERT_FALSE(any.ok());
  EXPECT_NE(r.err.find(std::string(any.status().message())), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("smallest feasible exact plan"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty());
}

TEST_F(SolveCliTest, UsageErrorsExitTwo) {
  const std::string t = "--table " + Path("table.json");
  const std::array<std::pair<std::string, std::string>, 9> cases = {{
      {"--ratio 4", "missing --table"},
      {t, "exactly one of --ratio and --budget-bytes"},
      {t + " --ratio 4 --budget-bytes 100 --context 10", "exactly one"},
      {t + " --budget-bytes 100", "needs --context"},
      {t + " --ratio 0.5", ">= 1"},
      {t + " --ratio abc", "expects a number"},
      {t + " --ratio 4 --solver dp", "allowed: greedy, exact, 1d, 2d_uniform, 2d"},
      {t + " --ratio 4 --context 0", "--context 0"},
      {t + " --ratio 4 --frobnicate", "unknown flag"},
  }};
  for (const auto& [args, needle] : cases) {
    RunResult r = Run(args);
    EXPECT_EQ(r.exit_code, 2) << args;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << ": " << r.err;
  }
  RunResult help = Run("--help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--budget-bytes"), std::string::npos);
}

TEST_F(SolveCliTest, UnreadableTableFailsWithOne) {
  RunResult r = Run("--table " + Path("missing.json") + " --ratio 4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("missing.json"), std::string::npos) << r.err;
  ASSERT_TRUE(WriteFileAtomic(Path("bad.json"), "{\"model\": 1}").ok());
  r = Run("--table " + Path("bad.json") + " --ratio 4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("bad.json"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moend

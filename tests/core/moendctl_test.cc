// moendctl's contract as a user meets it: --help everywhere, exit code 2 for
// bad usage with a message, 1 for failed operations, JSON for scripts.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "tests/util/child_process.h"

namespace moend {
namespace {

struct CtlRun {
  int exit_code;
  std::string output;
};

CtlRun Moendctl(std::vector<std::string> args) {
  testing::ChildProcess p(MOENDCTL_BIN, std::move(args));
  const int status = p.WaitExit(absl::Seconds(120));
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, p.output()};
}

const std::string kSrc = MOEND_SOURCE_DIR;

TEST(MoendctlTest, EveryCommandHasHelp) {
  for (const char* cmd : {"predict", "logits", "calibrate", "solve", "eval", "plan", "generate"}) {
    CtlRun r = Moendctl({cmd, "--help"});
    EXPECT_EQ(r.exit_code, 0) << cmd << ": " << r.output;
    EXPECT_NE(r.output.find("usage: moendctl"), std::string::npos) << cmd;
  }
  EXPECT_EQ(Moendctl({"--help"}).exit_code, 0);
}

TEST(MoendctlTest, BadUsageExitsTwoWithAMessage) {
  CtlRun unknown = Moendctl({"frobnicate"});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.output.find("unknown command 'frobnicate'"), std::string::npos);
  CtlRun flag = Moendctl({"predict", "--modle", "x"});
  EXPECT_EQ(flag.exit_code, 2);
  EXPECT_NE(flag.output.find("unknown flag '--modle'"), std::string::npos) << flag.output;
  CtlRun missing = Moendctl({"logits", "--model", kSrc + "/models/tinycode"});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.output.find("missing --input"), std::string::npos) << missing.output;
  CtlRun probes = Moendctl({"calibrate", "--model", kSrc + "/models/tinycode", "--data",
                         kSrc + "/data/calibration.bin", "--out", "/dev/null", "--seq-len", "100"});
  EXPECT_EQ(probes.exit_code, 2);
  EXPECT_NE(probes.output.find("must exceed --probes"), std::string::npos) << probes.output;
  CtlRun precision = Moendctl({"calibrate", "--model", kSrc + "/models/tinycode", "--data",
                               kSrc + "/data/calibration.bin", "--out", "/dev/null", "--gpu-forward", "fp16"});
  EXPECT_EQ(precision.exit_code, 2);
  EXPECT_NE(precision.output.find("--gpu-forward 'fp16' is not one of bf16, fp32"), std::string::npos)
      << precision.output;
}

TEST(MoendctlTest, FailedOperationsExitOne) {
  CtlRun r = Moendctl({"predict", "--model", "/nonexistent/model", "--input",
                    kSrc + "/data/heldout_code.bin"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("/nonexistent/model"), std::string::npos) << r.output;
}

TEST(MoendctlTest, PredictJsonIsMachineReadable) {
  CtlRun r = Moendctl({"predict", "--model", kSrc + "/models/tinycode", "--input",
                    kSrc + "/data/heldout_code.bin", "--tokens", "300", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  nlohmann::json j = nlohmann::json::parse(r.output, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.output;
  EXPECT_EQ(j["tokens"], 300);
  EXPECT_GT(j["top1_accuracy"].get<double>(), 0.5);  // the model predicts code well
  EXPECT_LT(j["bits_per_byte"].get<double>(), 2.0);
}

}  // namespace
}  // namespace moend

// moendctl's contract as a user meets it: --help everywhere, exit code 2 for
// bad usage with a message, 1 for failed operations, JSON for scripts.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
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
  for (const char* cmd :
       {"predict", "logits", "calibrate", "publish", "solve", "eval", "plan", "generate"}) {
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
  CtlRun fleet_recall = Moendctl({"calibrate", "--registry", "127.0.0.1:1", "--model",
                                  kSrc + "/models/tinycode", "--data", kSrc + "/data/calibration.bin",
                                  "--out", "/dev/null", "--recall-data", "none"});
  EXPECT_EQ(fleet_recall.exit_code, 2) << fleet_recall.output;
  EXPECT_NE(fleet_recall.output.find("--recall-data is not supported with --registry"),
            std::string::npos)
      << fleet_recall.output;
}

TEST(MoendctlTest, FailedOperationsExitOne) {
  CtlRun r = Moendctl({"predict", "--model", "/nonexistent/model", "--input",
                    kSrc + "/data/heldout_code.bin"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("/nonexistent/model"), std::string::npos) << r.output;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Calibration adds the recall signal from calibration_recall.bin beside
// --data unless told --recall-data none: the table is the sum of both signals,
// per layer and per KV head.
TEST(MoendctlTest, CalibrateSumsTheCodeAndRecallSignals) {
  const std::string dir = ::testing::TempDir() + "moendctl_recall_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string code = ReadBytes(kSrc + "/data/calibration.bin").substr(0, 1024);
  const std::string recall = ReadBytes(kSrc + "/data/calibration_recall.bin").substr(4096 - 1024, 1024);
  std::ofstream(dir + "/code.bin", std::ios::binary) << code;
  std::ofstream(dir + "/calibration_recall.bin", std::ios::binary) << recall;
  const std::vector<std::string> common = {"calibrate", "--model", kSrc + "/models/tinycode",
                                           "--seq-len", "1024", "--probes", "64", "--threads", "2",
                                           "--recall-seq-len", "1024"};
  auto run = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = common;
    args.insert(args.end(), extra.begin(), extra.end());
    return Moendctl(args);
  };
  CtlRun both = run({"--data", dir + "/code.bin", "--out", dir + "/both.json"});
  ASSERT_EQ(both.exit_code, 0) << both.output;
  CtlRun code_only = run({"--data", dir + "/code.bin", "--recall-data", "none", "--out",
                          dir + "/code.json"});
  ASSERT_EQ(code_only.exit_code, 0) << code_only.output;
  // The recall file alone as code data, probing its last 33 tokens.
  CtlRun recall_only = Moendctl({"calibrate", "--model", kSrc + "/models/tinycode", "--data",
                                 dir + "/calibration_recall.bin", "--seq-len", "1024", "--probes",
                                 "33", "--threads", "2", "--recall-data", "none", "--out",
                                 dir + "/recall.json"});
  ASSERT_EQ(recall_only.exit_code, 0) << recall_only.output;
  auto load = [](const std::string& path) {
    return nlohmann::json::parse(ReadBytes(path));
  };
  const nlohmann::json b = load(dir + "/both.json"), c = load(dir + "/code.json"),
                       r = load(dir + "/recall.json");
  EXPECT_EQ(b["signals"].size(), 2u);
  EXPECT_EQ(c["signals"].size(), 1u);
  EXPECT_EQ(b["samples"], 2);
  EXPECT_EQ(b["compression_point"], 1024 - 64);
  ASSERT_EQ(b["s_head"].size(), 12u);
  ASSERT_EQ(b["s_head"][0].size(), 2u);
  for (int l = 0; l < 12; ++l) {
    for (int t = 0; t < 112; t += 7) {
      const double want = c["s"][l][t].get<double>() + r["s"][l][t].get<double>();
      EXPECT_NEAR(b["s"][l][t].get<double>(), want, 1e-12 + 1e-9 * want) << l << " " << t;
      for (int h = 0; h < 2; ++h) {
        const double wh = c["s_head"][l][h][t].get<double>() + r["s_head"][l][h][t].get<double>();
        EXPECT_NEAR(b["s_head"][l][h][t].get<double>(), wh, 1e-12 + 1e-9 * wh);
      }
    }
  }
  // A recall file too short for one sequence fails before any measuring.
  CtlRun short_file = Moendctl({"calibrate", "--model", kSrc + "/models/tinycode", "--data",
                                dir + "/code.bin", "--seq-len", "1024", "--recall-data",
                                dir + "/code.bin", "--recall-seq-len", "4096", "--out",
                                dir + "/x.json"});
  EXPECT_NE(short_file.exit_code, 0) << short_file.output;
  EXPECT_NE(short_file.output.find("holds 0 sequences of 4096 tokens"), std::string::npos)
      << short_file.output;
  EXPECT_NE(short_file.output.find("--recall-data"), std::string::npos) << short_file.output;
  std::filesystem::remove_all(dir);
}

// Next-byte bits per byte and top-1 accuracy over the first `n` tokens of
// data/golden/input_A.bin (= the first 512 bytes of data/heldout_code.bin),
// from the golden logits (an independent float32 forward, data/golden/).
struct GoldenScore {
  double bits_per_byte = 0;
  double top1 = 0;
};
GoldenScore ScoreGoldenLogits(int n) {
  const std::string tokens = ReadBytes(kSrc + "/data/golden/input_A.bin");
  const std::string raw = ReadBytes(kSrc + "/data/golden/logits_A.f32");
  constexpr int kVocab = 256;
  EXPECT_GE(static_cast<int>(tokens.size()), n);
  EXPECT_EQ(raw.size(), tokens.size() * kVocab * sizeof(float));
  std::vector<float> logits(raw.size() / sizeof(float));
  std::memcpy(logits.data(), raw.data(), logits.size() * sizeof(float));
  GoldenScore score;
  for (int t = 0; t + 1 < n; ++t) {
    const float* row = logits.data() + static_cast<size_t>(t) * kVocab;
    const int next = static_cast<unsigned char>(tokens[t + 1]);
    const int best = static_cast<int>(std::max_element(row, row + kVocab) - row);
    double z = 0;
    for (int i = 0; i < kVocab; ++i) z += std::exp(static_cast<double>(row[i]) - row[best]);
    score.bits_per_byte += (std::log(z) - (row[next] - row[best])) / std::log(2.0);
    score.top1 += best == next;
  }
  score.bits_per_byte /= n - 1;
  score.top1 /= n - 1;
  return score;
}

TEST(MoendctlTest, PredictJsonIsMachineReadable) {
  constexpr int kTokens = 300;
  CtlRun r = Moendctl({"predict", "--model", kSrc + "/models/tinycode", "--input",
                    kSrc + "/data/heldout_code.bin", "--tokens", std::to_string(kTokens), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  nlohmann::json j = nlohmann::json::parse(r.output, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.output;
  EXPECT_EQ(j["tokens"], kTokens);
  const GoldenScore golden = ScoreGoldenLogits(kTokens);
  ASSERT_GT(golden.bits_per_byte, 1.0);  // about 1.63 over these 300 bytes
  ASSERT_LT(golden.bits_per_byte, 2.5);
  // The logits agree with the golden ones to 2e-3 (GoldenTest), which moves
  // the mean of -log2 p by far less than 0.01; the top-1 choice may flip
  // where two bytes tie to within that.
  EXPECT_NEAR(j["bits_per_byte"].get<double>(), golden.bits_per_byte, 0.01) << r.output;
  EXPECT_NEAR(j["top1_accuracy"].get<double>(), golden.top1, 2.5 / (kTokens - 1)) << r.output;
}

}  // namespace
}  // namespace moend

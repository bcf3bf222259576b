// core/flags.h: the flag parser every binary uses.
#include "core/flags.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moend {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<Args> ParseAll(std::vector<std::string> argv) {
  std::vector<char*> raw;
  for (std::string& a : argv) raw.push_back(a.data());
  return Args::Parse(static_cast<int>(raw.size()), raw.data(), {"db", "n"}, {"quiet"});
}

TEST(ArgsTest, BothValueFormsAndSwitches) {
  auto args = ParseAll({"--db", "/x", "--n=5", "--quiet"});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(*args->Required("db"), "/x");
  EXPECT_EQ(*args->Int("n", 0), 5);
  EXPECT_TRUE(args->Has("quiet"));
  EXPECT_FALSE(args->help());
}

TEST(ArgsTest, ErrorsNameTheFlag) {
  auto unknown = ParseAll({"--dbb", "/x"});
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("--dbb"));
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("--db"));  // the known ones
  EXPECT_FALSE(ParseAll({"--db"}).ok()) << "a value flag without its value";
  EXPECT_FALSE(ParseAll({"--quiet=yes"}).ok()) << "a switch with a value";
  EXPECT_FALSE(ParseAll({"stray"}).ok());
  auto missing = ParseAll({});
  ASSERT_TRUE(missing.ok());
  EXPECT_THAT(std::string(missing->Required("db").status().message()), HasSubstr("--db"));
}

TEST(ArgsTest, IntInRange) {
  auto args = ParseAll({"--n", "0"});
  ASSERT_TRUE(args.ok());
  auto zero = args->IntInRange("n", 7, 1, 10);
  ASSERT_FALSE(zero.ok());
  EXPECT_THAT(std::string(zero.status().message()), HasSubstr("[1, 10]"));
  EXPECT_EQ(*args->IntInRange("n", 7, 0, 10), 0);
  EXPECT_EQ(*ParseAll({})->IntInRange("n", 7, 1, 10), 7) << "absent: the fallback";
  EXPECT_FALSE(ParseAll({"--n", "seven"})->IntInRange("n", 7, 1, 10).ok());
  EXPECT_FALSE(ParseAll({"--n", "99999999999999999999"})->IntInRange("n", 7, 1, 10).ok());
}

TEST(ArgsTest, ParseCommandLineGivesMainsTheirExitCode) {
  auto run = [](std::vector<std::string> argv, int* code) {
    argv.insert(argv.begin(), "prog");
    std::vector<char*> raw;
    for (std::string& a : argv) raw.push_back(a.data());
    *code = -1;
    return ParseCommandLine("prog", "usage: prog\n", static_cast<int>(raw.size()), raw.data(),
                            {"db"}, {}, code);
  };
  int code = -1;
  auto ok = run({"--db", "/x"}, &code);
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(*ok->Required("db"), "/x");
  EXPECT_EQ(code, -1) << "untouched when main goes on";
  EXPECT_FALSE(run({"--bogus"}, &code).has_value());
  EXPECT_EQ(code, 2);
  EXPECT_FALSE(run({"--help"}, &code).has_value());
  EXPECT_EQ(code, 0);
}

}  // namespace
}  // namespace moend

// Minimal "--flag value" / "--switch" parser for the command-line programs.
#ifndef MOEND_CORE_FLAGS_H_
#define MOEND_CORE_FLAGS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moend {

// Flags of one subcommand. Parse() rejects unknown flags and missing values.
class Args {
 public:
  // `value_flags` take a value ("--model DIR"); `switches` take none ("--json").
  static absl::StatusOr<Args> Parse(int argc, char** argv, const std::set<std::string>& value_flags,
                                    const std::set<std::string>& switches);

  bool Has(const std::string& flag) const;
  // The flag's value, or an InvalidArgument naming the missing flag.
  absl::StatusOr<std::string> Required(const std::string& flag) const;
  std::optional<std::string> Optional(const std::string& flag) const;
  absl::StatusOr<int64_t> Int(const std::string& flag, int64_t fallback) const;
  // Int, and InvalidArgument naming the range when outside [lo, hi].
  absl::StatusOr<int64_t> IntInRange(const std::string& flag, int64_t fallback, int64_t lo,
                                     int64_t hi) const;
  absl::StatusOr<double> Double(const std::string& flag, double fallback) const;
  bool help() const { return help_; }

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> switches_;
  bool help_ = false;
};

// For main(): Args::Parse of argv[1..]. nullopt when main should return
// *exit_code at once: 2 after printing "<program>: <error>" and `usage` to
// stderr, 0 after printing `usage` to stdout for --help.
std::optional<Args> ParseCommandLine(const char* program, const char* usage, int argc,
                                     char** argv, const std::set<std::string>& value_flags,
                                     const std::set<std::string>& switches, int* exit_code);

}  // namespace moend

#endif  // MOEND_CORE_FLAGS_H_

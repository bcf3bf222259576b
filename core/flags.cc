#include "core/flags.h"

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moend {

absl::StatusOr<Args> Args::Parse(int argc, char** argv, const std::set<std::string>& value_flags,
                                 const std::set<std::string>& switches) {
  Args args;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      args.help_ = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    std::string name = arg.substr(2);
    std::optional<std::string> inline_value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (switches.count(name)) {
      if (inline_value) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      }
      args.switches_.insert(name);
    } else if (value_flags.count(name)) {
      if (inline_value) {
        args.values_[name] = *inline_value;
      } else if (i + 1 < argc) {
        args.values_[name] = argv[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
    } else {
      std::vector<std::string> known;
      for (const auto& f : value_flags) known.push_back("--" + f);
      for (const auto& f : switches) known.push_back("--" + f);
      return absl::InvalidArgumentError(absl::StrCat("unknown flag '--", name,
                                                     "'; known flags: ", absl::StrJoin(known, " ")));
    }
  }
  return args;
}

bool Args::Has(const std::string& flag) const {
  return values_.count(flag) || switches_.count(flag);
}

absl::StatusOr<std::string> Args::Required(const std::string& flag) const {
  auto it = values_.find(flag);
  if (it == values_.end()) return absl::InvalidArgumentError(absl::StrCat("missing --", flag));
  return it->second;
}

std::optional<std::string> Args::Optional(const std::string& flag) const {
  auto it = values_.find(flag);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<int64_t> Args::Int(const std::string& flag, int64_t fallback) const {
  auto it = values_.find(flag);
  if (it == values_.end()) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " expects an integer, got '", it->second, "'"));
  }
  return v;
}

absl::StatusOr<int64_t> Args::IntInRange(const std::string& flag, int64_t fallback, int64_t lo,
                                         int64_t hi) const {
  absl::StatusOr<int64_t> v = Int(flag, fallback);
  if (v.ok() && (*v < lo || *v > hi)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " must be an integer in [", lo, ", ", hi, "], got ", *v));
  }
  return v;
}

absl::StatusOr<double> Args::Double(const std::string& flag, double fallback) const {
  auto it = values_.find(flag);
  if (it == values_.end()) return fallback;
  double v;
  if (!absl::SimpleAtod(it->second, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " expects a number, got '", it->second, "'"));
  }
  return v;
}

std::optional<Args> ParseCommandLine(const char* program, const char* usage, int argc,
                                     char** argv, const std::set<std::string>& value_flags,
                                     const std::set<std::string>& switches, int* exit_code) {
  absl::StatusOr<Args> args = Args::Parse(argc - 1, argv + 1, value_flags, switches);
  if (!args.ok()) {
    std::fprintf(stderr, "%s: %s\n%s", program, std::string(args.status().message()).c_str(),
                 usage);
    *exit_code = 2;
    return std::nullopt;
  }
  if (args->help()) {
    std::printf("%s", usage);
    *exit_code = 0;
    return std::nullopt;
  }
  return *std::move(args);
}

}  // namespace moend

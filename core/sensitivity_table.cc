#include "core/sensitivity_table.h"

#include <cmath>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace moend {

absl::Status SensitivityTable::Validate() const {
  if (num_layers <= 0 || num_layers > 100000) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_layers ", num_layers, " is outside [1, 100000]"));
  }
  if (num_kv_heads <= 0 || num_kv_heads > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_kv_heads ", num_kv_heads, " is outside [1, 4096]"));
  }
  if (head_dim <= 0 || head_dim > 4096 || head_dim % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim ", head_dim, " must be a positive multiple of 8 up to 4096"));
  }
  if (compression_point <= 0 || compression_point > seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("compression_point ", compression_point,
                                                   " must be in [1, seq_len=", seq_len, "]"));
  }
  if (samples < 0) return absl::InvalidArgumentError("samples must be >= 0");
  if (tuples.empty()) return absl::InvalidArgumentError("table has no tuples");
  std::set<std::tuple<double, int, int>> seen;
  for (const CompressionTuple& t : tuples) {
    MOEND_RETURN_IF_ERROR(ValidateTuple(t));
    if (!seen.insert({t.keep, t.kbits, t.vbits}).second) {
      return absl::InvalidArgumentError(absl::StrCat("tuple ", ToString(t), " appears twice"));
    }
  }
  if (static_cast<int64_t>(s.size()) != num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("s has ", s.size(), " rows but num_layers is ", num_layers));
  }
  for (size_t l = 0; l < s.size(); ++l) {
    if (s[l].size() != tuples.size()) {
      return absl::InvalidArgumentError(absl::StrCat("s row ", l, " has ", s[l].size(),
                                                     " values but there are ", tuples.size(),
                                                     " tuples"));
    }
    for (size_t t = 0; t < s[l].size(); ++t) {
      if (!std::isfinite(s[l][t]) || s[l][t] < 0) {
        return absl::InvalidArgumentError(absl::StrCat("s[", l, "][", t, "] = ", s[l][t],
                                                       " is not a finite value >= 0"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SensitivityTable> SensitivityTableFromJson(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("sensitivity table is not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("sensitivity table must be a JSON object");
  SensitivityTable t;
  try {
    t.model = j.at("model").get<std::string>();
    t.num_layers = j.at("num_layers").get<int64_t>();
    t.num_kv_heads = j.at("num_kv_heads").get<int64_t>();
    t.head_dim = j.at("head_dim").get<int64_t>();
    t.seq_len = j.at("seq_len").get<int64_t>();
    t.compression_point = j.at("compression_point").get<int64_t>();
    t.samples = j.at("samples").get<int64_t>();
    for (const auto& e : j.at("tuples")) {
      t.tuples.push_back({e.at("keep").get<double>(), e.at("kbits").get<int>(),
                          e.at("vbits").get<int>()});
    }
    for (const auto& row : j.at("s")) {
      std::vector<double> r;
      for (const auto& v : row) {
        // JSON has no NaN; a null stands for one and is rejected by Validate.
        r.push_back(v.is_null() ? std::nan("") : v.get<double>());
      }
      t.s.push_back(std::move(r));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("sensitivity table: ", e.what()));
  }
  MOEND_RETURN_IF_ERROR(t.Validate());
  return t;
}

std::string SensitivityTableToJson(const SensitivityTable& t) {
  nlohmann::json j;
  j["model"] = t.model;
  j["num_layers"] = t.num_layers;
  j["num_kv_heads"] = t.num_kv_heads;
  j["head_dim"] = t.head_dim;
  j["seq_len"] = t.seq_len;
  j["compression_point"] = t.compression_point;
  j["samples"] = t.samples;
  j["tuples"] = nlohmann::json::array();
  for (const CompressionTuple& tu : t.tuples) {
    j["tuples"].push_back({{"keep", tu.keep}, {"kbits", tu.kbits}, {"vbits", tu.vbits}});
  }
  j["s"] = t.s;
  return j.dump(1) + "\n";
}

absl::StatusOr<SensitivityTable> ReadSensitivityTable(const std::string& path) {
  MOEND_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  absl::StatusOr<SensitivityTable> t = SensitivityTableFromJson(text);
  if (!t.ok()) {
    return absl::Status(t.status().code(), absl::StrCat(path, ": ", t.status().message()));
  }
  return t;
}

absl::Status WriteSensitivityTable(const SensitivityTable& table, const std::string& path) {
  MOEND_RETURN_IF_ERROR(table.Validate());
  return WriteFileAtomic(path, SensitivityTableToJson(table));
}

}  // namespace moend

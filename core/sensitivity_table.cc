#include "core/sensitivity_table.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
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
  if (!s_head.empty()) {
    if (static_cast<int64_t>(s_head.size()) != num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("s_head has ", s_head.size(), " layers but num_layers is ", num_layers));
    }
    for (size_t l = 0; l < s_head.size(); ++l) {
      if (static_cast<int64_t>(s_head[l].size()) != num_kv_heads) {
        return absl::InvalidArgumentError(absl::StrCat("s_head layer ", l, " has ",
                                                       s_head[l].size(),
                                                       " heads but num_kv_heads is ",
                                                       num_kv_heads));
      }
      for (size_t h = 0; h < s_head[l].size(); ++h) {
        const std::vector<double>& row = s_head[l][h];
        if (row.size() != tuples.size()) {
          return absl::InvalidArgumentError(absl::StrCat("s_head[", l, "][", h, "] has ",
                                                         row.size(), " values but there are ",
                                                         tuples.size(), " tuples"));
        }
        for (size_t t = 0; t < row.size(); ++t) {
          if (!std::isfinite(row[t]) || row[t] < 0) {
            return absl::InvalidArgumentError(absl::StrCat("s_head[", l, "][", h, "][", t,
                                                           "] = ", row[t],
                                                           " is not a finite value >= 0"));
          }
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SensitivityTable> SumTables(const SensitivityTable& a, const SensitivityTable& b) {
  MOEND_RETURN_IF_ERROR(a.Validate());
  MOEND_RETURN_IF_ERROR(b.Validate());
  if (a.model != b.model) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot add tables of models '", a.model, "' and '", b.model, "'"));
  }
  if (a.num_layers != b.num_layers || a.num_kv_heads != b.num_kv_heads ||
      a.head_dim != b.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot add tables of shapes (layers ", a.num_layers, ", kv heads ", a.num_kv_heads,
        ", D ", a.head_dim, ") and (", b.num_layers, ", ", b.num_kv_heads, ", ", b.head_dim, ")"));
  }
  if (a.tuples != b.tuples) {
    return absl::InvalidArgumentError("cannot add tables measured over different tuple grids");
  }
  SensitivityTable sum = a;
  sum.samples = a.samples + b.samples;
  for (size_t l = 0; l < sum.s.size(); ++l) {
    for (size_t t = 0; t < sum.s[l].size(); ++t) sum.s[l][t] += b.s[l][t];
  }
  if (a.has_heads() && b.has_heads()) {
    for (size_t l = 0; l < sum.s_head.size(); ++l) {
      for (size_t h = 0; h < sum.s_head[l].size(); ++h) {
        for (size_t t = 0; t < sum.s_head[l][h].size(); ++t) {
          sum.s_head[l][h][t] += b.s_head[l][h][t];
        }
      }
    }
  } else {
    sum.s_head.clear();
  }
  sum.signals.insert(sum.signals.end(), b.signals.begin(), b.signals.end());
  return sum;
}

namespace {

using nlohmann::json;

// Typed readers: nlohmann's get<int64_t>() would truncate 12.5, accept true
// and "convert" 1e300 (undefined behaviour); a table with such a field is
// malformed.
absl::StatusOr<const json*> Member(const json& obj, const char* name, const std::string& where) {
  if (!obj.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, " must be a JSON object"));
  }
  auto it = obj.find(name);
  if (it == obj.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing field \"", name, "\""));
  }
  return &*it;
}

absl::StatusOr<int64_t> IntMember(const json& obj, const char* name, const std::string& where) {
  MOEND_ASSIGN_OR_RETURN(const json* v, Member(obj, name, where));
  if (v->is_number_unsigned() &&
      v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": \"", name, "\" is too large"));
  }
  if (!v->is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"", name, "\" must be an integer, got ", v->dump()));
  }
  return v->get<int64_t>();
}

absl::StatusOr<double> NumberMember(const json& obj, const char* name, const std::string& where) {
  MOEND_ASSIGN_OR_RETURN(const json* v, Member(obj, name, where));
  if (!v->is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"", name, "\" must be a number, got ", v->dump()));
  }
  return v->get<double>();
}

absl::StatusOr<int> BitsMember(const json& obj, const char* name, const std::string& where) {
  MOEND_ASSIGN_OR_RETURN(int64_t bits, IntMember(obj, name, where));
  if (!IsSupportedBits(bits < 0 || bits > kFp16Bits ? 0 : static_cast<int>(bits))) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"", name, "\" ", bits, " is not one of 2, 4, 8, 16"));
  }
  return static_cast<int>(bits);
}

absl::StatusOr<const json*> ArrayMember(const json& obj, const char* name,
                                        const std::string& where) {
  MOEND_ASSIGN_OR_RETURN(const json* v, Member(obj, name, where));
  if (!v->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": \"", name, "\" must be an array"));
  }
  return v;
}

}  // namespace

absl::StatusOr<SensitivityTable> SensitivityTableFromJson(const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("sensitivity table is not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("sensitivity table must be a JSON object");
  const std::string where = "sensitivity table";
  SensitivityTable t;
  MOEND_ASSIGN_OR_RETURN(const json* model, Member(j, "model", where));
  if (!model->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"model\" must be a string, got ", model->dump()));
  }
  t.model = model->get<std::string>();
  MOEND_ASSIGN_OR_RETURN(t.num_layers, IntMember(j, "num_layers", where));
  MOEND_ASSIGN_OR_RETURN(t.num_kv_heads, IntMember(j, "num_kv_heads", where));
  MOEND_ASSIGN_OR_RETURN(t.head_dim, IntMember(j, "head_dim", where));
  MOEND_ASSIGN_OR_RETURN(t.seq_len, IntMember(j, "seq_len", where));
  MOEND_ASSIGN_OR_RETURN(t.compression_point, IntMember(j, "compression_point", where));
  MOEND_ASSIGN_OR_RETURN(t.samples, IntMember(j, "samples", where));
  MOEND_ASSIGN_OR_RETURN(const json* tuples, ArrayMember(j, "tuples", where));
  for (size_t i = 0; i < tuples->size(); ++i) {
    const json& e = (*tuples)[i];
    const std::string tw = absl::StrCat(where, " tuple ", i);
    CompressionTuple tuple;
    MOEND_ASSIGN_OR_RETURN(tuple.keep, NumberMember(e, "keep", tw));
    MOEND_ASSIGN_OR_RETURN(tuple.kbits, BitsMember(e, "kbits", tw));
    MOEND_ASSIGN_OR_RETURN(tuple.vbits, BitsMember(e, "vbits", tw));
    t.tuples.push_back(tuple);
  }
  MOEND_ASSIGN_OR_RETURN(const json* rows, ArrayMember(j, "s", where));
  for (size_t l = 0; l < rows->size(); ++l) {
    const json& row = (*rows)[l];
    if (!row.is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": s row ", l, " must be an array"));
    }
    std::vector<double> r;
    r.reserve(row.size());
    for (size_t i = 0; i < row.size(); ++i) {
      const json& v = row[i];
      // JSON has no NaN; a null stands for one and is rejected by Validate.
      if (!v.is_null() && !v.is_number()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": s[", l, "][", i,
                                                       "] must be a number, got ", v.dump()));
      }
      r.push_back(v.is_null() ? std::nan("") : v.get<double>());
    }
    t.s.push_back(std::move(r));
  }
  if (j.contains("s_head")) {
    MOEND_ASSIGN_OR_RETURN(const json* layers, ArrayMember(j, "s_head", where));
    for (size_t l = 0; l < layers->size(); ++l) {
      const json& heads = (*layers)[l];
      if (!heads.is_array()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": s_head layer ", l, " must be an array"));
      }
      std::vector<std::vector<double>> hrows;
      for (size_t h = 0; h < heads.size(); ++h) {
        const json& row = heads[h];
        if (!row.is_array()) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": s_head[", l, "][", h, "] must be an array"));
        }
        std::vector<double> r;
        for (size_t i = 0; i < row.size(); ++i) {
          const json& v = row[i];
          if (!v.is_null() && !v.is_number()) {
            return absl::InvalidArgumentError(absl::StrCat(
                where, ": s_head[", l, "][", h, "][", i, "] must be a number, got ", v.dump()));
          }
          r.push_back(v.is_null() ? std::nan("") : v.get<double>());
        }
        hrows.push_back(std::move(r));
      }
      t.s_head.push_back(std::move(hrows));
    }
  }
  if (j.contains("signals")) {
    MOEND_ASSIGN_OR_RETURN(const json* signals, ArrayMember(j, "signals", where));
    for (const json& e : *signals) {
      if (!e.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": \"signals\" must hold strings, got ", e.dump()));
      }
      t.signals.push_back(e.get<std::string>());
    }
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
  if (t.has_heads()) j["s_head"] = t.s_head;
  if (!t.signals.empty()) j["signals"] = t.signals;
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

namespace {

// Ranks 1..n of `v`, ties at their average rank.
std::vector<double> Ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return v[x] < v[y]; });
  std::vector<double> rank(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    const double avg = (static_cast<double>(i) + static_cast<double>(j)) / 2 + 1;
    for (size_t t = i; t <= j; ++t) rank[order[t]] = avg;
    i = j + 1;
  }
  return rank;
}

}  // namespace

absl::StatusOr<SensitivityAgreement> CompareSensitivities(const std::vector<std::vector<double>>& a,
                                                          const std::vector<std::vector<double>>& b,
                                                          double min_reference) {
  if (a.size() != b.size() || b.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot compare tables of ", a.size(), " and ", b.size(), " layers"));
  }
  std::vector<double> fa, fb, relative;
  SensitivityAgreement out;
  for (size_t l = 0; l < b.size(); ++l) {
    if (a[l].size() != b[l].size() || b[l].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, " has ", a[l].size(), " and ", b[l].size(),
                                                     " tuples"));
    }
    for (size_t t = 0; t < b[l].size(); ++t) {
      fa.push_back(a[l][t]);
      fb.push_back(b[l][t]);
      double r = 0;
      if (b[l][t] > 0 && b[l][t] > min_reference) {
        r = std::fabs(a[l][t] - b[l][t]) / b[l][t];
        relative.push_back(r);
      } else if (min_reference > 0) {
        continue;
      } else if (a[l][t] != b[l][t]) {
        r = std::numeric_limits<double>::infinity();
      }
      if (r > out.worst_relative || out.worst_layer < 0) {
        out.worst_relative = r;
        out.worst_layer = static_cast<int64_t>(l);
        out.worst_tuple = static_cast<int64_t>(t);
      }
    }
  }
  out.entries = static_cast<int64_t>(fa.size());
  if (!relative.empty()) {
    std::nth_element(relative.begin(), relative.begin() + relative.size() / 2, relative.end());
    out.median_relative = relative[relative.size() / 2];
  }
  const std::vector<double> ra = Ranks(fa), rb = Ranks(fb);
  const double mean = (static_cast<double>(ra.size()) + 1) / 2;  // of either rank vector
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < ra.size(); ++i) {
    sab += (ra[i] - mean) * (rb[i] - mean);
    saa += (ra[i] - mean) * (ra[i] - mean);
    sbb += (rb[i] - mean) * (rb[i] - mean);
  }
  // All entries tied on a side: the orders agree only if both are constant.
  out.spearman = saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : (saa == sbb ? 1.0 : 0.0);
  return out;
}

}  // namespace moend

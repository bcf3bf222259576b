#include "core/plan.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/file_util.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace moend {

absl::Status Budget::Validate() const {
  switch (kind) {
    case Kind::kRatio:
      if (!std::isfinite(ratio) || ratio < 1.0) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "compression ratio %g is not allowed; it must be a finite number >= 1 "
            "(1 = the full cache)",
            ratio));
      }
      if (context < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "context ", context, " is negative; give a positive token count or 0 for the "
            "table's compression point"));
      }
      break;
    case Kind::kBytes:
      if (bytes <= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("budget ", bytes, " bytes is not allowed; it must be > 0"));
      }
      if (context <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "context ", context, " is not allowed; a budget in bytes needs a context > 0 tokens"));
      }
      break;
    default:
      return absl::InvalidArgumentError("unknown budget kind");
  }
  if (context > kMaxContext) {
    return absl::InvalidArgumentError(
        absl::StrCat("context ", context, " tokens is above the limit of ", kMaxContext));
  }
  return absl::OkStatus();
}

std::string ToString(const Budget& b) {
  const std::string ctx =
      b.context > 0 ? absl::StrCat(" at context ", b.context) : " at the table's context";
  if (b.kind == Budget::Kind::kRatio) return absl::StrFormat("ratio %g%s", b.ratio, ctx);
  return absl::StrCat(b.bytes, " bytes", ctx);
}

absl::Status Plan::Validate() const {
  if (solver.empty()) return absl::InvalidArgumentError("plan: solver is empty");
  if (context <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("plan: context ", context, " must be > 0"));
  }
  if (budget_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan: budget_bytes ", budget_bytes, " must be > 0"));
  }
  if (layers.empty()) return absl::InvalidArgumentError("plan: has no layers");
  int64_t sum_bytes = 0;
  double sum_error = 0.0;
  size_t heads_per_layer = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    const PlanLayer& layer = layers[l];
    if (layer.heads.empty()) {
      absl::Status tuple_ok = ValidateTuple(layer.tuple);
      if (!tuple_ok.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("plan: layer ", l, ": ", tuple_ok.message()));
      }
    } else {
      if (heads_per_layer == 0) heads_per_layer = layer.heads.size();
      if (layer.heads.size() != heads_per_layer) {
        return absl::InvalidArgumentError(absl::StrCat("plan: layer ", l, " has ",
                                                       layer.heads.size(), " heads, an earlier "
                                                       "layer ", heads_per_layer));
      }
      int64_t head_bytes = 0;
      double head_error = 0.0;
      for (size_t h = 0; h < layer.heads.size(); ++h) {
        const PlanHead& head = layer.heads[h];
        const absl::Status ok = ValidateTuple(head.tuple);
        if (!ok.ok()) {
          return absl::InvalidArgumentError(
              absl::StrCat("plan: layer ", l, " head ", h, ": ", ok.message()));
        }
        if (head.bytes <= 0 || head.bytes > std::numeric_limits<int64_t>::max() - head_bytes) {
          return absl::InvalidArgumentError(absl::StrCat("plan: layer ", l, " head ", h,
                                                         ": bytes ", head.bytes,
                                                         " must be > 0 and sum within int64"));
        }
        if (!std::isfinite(head.predicted_error) || head.predicted_error < 0) {
          return absl::InvalidArgumentError(absl::StrCat("plan: layer ", l, " head ", h,
                                                         ": predicted_error ",
                                                         head.predicted_error,
                                                         " is not a finite value >= 0"));
        }
        head_bytes += head.bytes;
        head_error += head.predicted_error;
      }
      if (layer.bytes != head_bytes) {
        return absl::InvalidArgumentError(absl::StrCat("plan: layer ", l, ": bytes ", layer.bytes,
                                                       " is not the sum of its heads', ",
                                                       head_bytes));
      }
      if (std::abs(layer.predicted_error - head_error) >
          1e-9 * std::max(1.0, std::abs(head_error))) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "plan: layer %d: predicted_error %.17g is not the sum of its heads', %.17g", l,
            layer.predicted_error, head_error));
      }
    }
    if (layer.bytes <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("plan: layer ", l, ": bytes ", layer.bytes, " must be > 0"));
    }
    if (!std::isfinite(layer.predicted_error) || layer.predicted_error < 0) {
      return absl::InvalidArgumentError(absl::StrCat("plan: layer ", l, ": predicted_error ",
                                                     layer.predicted_error,
                                                     " is not a finite value >= 0"));
    }
    if (layer.bytes > std::numeric_limits<int64_t>::max() - sum_bytes) {
      return absl::InvalidArgumentError("plan: layer bytes overflow int64");
    }
    sum_bytes += layer.bytes;
    sum_error += layer.predicted_error;
  }
  if (total_bytes != sum_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("plan: total_bytes ", total_bytes,
                                                   " is not the sum of layer bytes, ", sum_bytes));
  }
  if (total_bytes > budget_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("plan: total_bytes ", total_bytes,
                                                   " exceeds budget_bytes ", budget_bytes));
  }
  if (!std::isfinite(predicted_error) ||
      std::abs(predicted_error - sum_error) > 1e-9 * std::max(1.0, std::abs(sum_error))) {
    return absl::InvalidArgumentError(
        absl::StrFormat("plan: predicted_error %.17g is not the sum of layer errors, %.17g",
                        predicted_error, sum_error));
  }
  if (!std::isfinite(ratio) || ratio <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("plan: ratio %g is not a finite value > 0", ratio));
  }
  return absl::OkStatus();
}

int64_t Plan::HeadsPerLayer() const {
  for (const PlanLayer& l : layers) {
    if (!l.heads.empty()) return static_cast<int64_t>(l.heads.size());
  }
  return 0;
}

std::vector<CompressionTuple> Plan::RuntimeTuples() const {
  const int64_t heads = HeadsPerLayer();
  std::vector<CompressionTuple> out;
  for (const PlanLayer& l : layers) {
    if (heads == 0) {
      out.push_back(l.tuple);
      continue;
    }
    for (int64_t h = 0; h < heads; ++h) out.push_back(l.HeadTuple(static_cast<size_t>(h)));
  }
  return out;
}

namespace {

using nlohmann::json;

// Typed field readers: nlohmann would silently convert 12.5 or "12" or true
// to an integer; a plan with such a field is malformed.
absl::StatusOr<const json*> Field(const json& obj, const char* name, const std::string& where) {
  auto it = obj.find(name);
  if (it == obj.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing field \"", name, "\""));
  }
  return &*it;
}

absl::StatusOr<int64_t> IntField(const json& obj, const char* name, const std::string& where) {
  MOEND_ASSIGN_OR_RETURN(const json* v, Field(obj, name, where));
  if (v->is_number_unsigned()) {
    if (v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": \"", name, "\" is too large"));
    }
    return static_cast<int64_t>(v->get<uint64_t>());
  }
  if (v->is_number_integer()) return v->get<int64_t>();
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": \"", name, "\" must be an integer, got ", v->dump()));
}

absl::StatusOr<double> DoubleField(const json& obj, const char* name, const std::string& where) {
  MOEND_ASSIGN_OR_RETURN(const json* v, Field(obj, name, where));
  if (!v->is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"", name, "\" must be a number, got ", v->dump()));
  }
  return v->get<double>();
}

absl::StatusOr<std::string> StringField(const json& obj, const char* name,
                                        const std::string& where) {
  MOEND_ASSIGN_OR_RETURN(const json* v, Field(obj, name, where));
  if (!v->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"", name, "\" must be a string, got ", v->dump()));
  }
  return v->get<std::string>();
}

absl::StatusOr<int> BitsField(const json& obj, const char* name, const std::string& where) {
  MOEND_ASSIGN_OR_RETURN(int64_t bits, IntField(obj, name, where));
  if (bits != 2 && bits != 4 && bits != 8 && bits != 16) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"", name, "\" ", bits, " is not one of 2, 4, 8, 16"));
  }
  return static_cast<int>(bits);
}

}  // namespace

absl::StatusOr<Plan> PlanFromJson(const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("plan is not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("plan must be a JSON object");
  const std::string where = "plan";
  Plan p;
  MOEND_ASSIGN_OR_RETURN(p.model, StringField(j, "model", where));
  MOEND_ASSIGN_OR_RETURN(p.solver, StringField(j, "solver", where));
  MOEND_ASSIGN_OR_RETURN(p.budget_bytes, IntField(j, "budget_bytes", where));
  MOEND_ASSIGN_OR_RETURN(p.context, IntField(j, "context", where));
  MOEND_ASSIGN_OR_RETURN(p.total_bytes, IntField(j, "total_bytes", where));
  MOEND_ASSIGN_OR_RETURN(p.ratio, DoubleField(j, "ratio", where));
  MOEND_ASSIGN_OR_RETURN(p.predicted_error, DoubleField(j, "predicted_error", where));
  MOEND_ASSIGN_OR_RETURN(const json* layers, Field(j, "layers", where));
  if (!layers->is_array()) {
    return absl::InvalidArgumentError("plan: \"layers\" must be an array");
  }
  for (size_t l = 0; l < layers->size(); ++l) {
    const json& e = (*layers)[l];
    const std::string lw = absl::StrCat("plan layer ", l);
    if (!e.is_object()) return absl::InvalidArgumentError(absl::StrCat(lw, " must be an object"));
    PlanLayer layer;
    if (e.contains("heads")) {
      const json& heads = e["heads"];
      if (!heads.is_array() || heads.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(lw, ": \"heads\" must be a non-empty "
                                                           "array"));
      }
      for (size_t h = 0; h < heads.size(); ++h) {
        const json& he = heads[h];
        const std::string hw = absl::StrCat(lw, " head ", h);
        if (!he.is_object()) {
          return absl::InvalidArgumentError(absl::StrCat(hw, " must be an object"));
        }
        PlanHead head;
        MOEND_ASSIGN_OR_RETURN(head.tuple.keep, DoubleField(he, "keep", hw));
        MOEND_ASSIGN_OR_RETURN(head.tuple.kbits, BitsField(he, "kbits", hw));
        MOEND_ASSIGN_OR_RETURN(head.tuple.vbits, BitsField(he, "vbits", hw));
        MOEND_ASSIGN_OR_RETURN(head.bytes, IntField(he, "bytes", hw));
        MOEND_ASSIGN_OR_RETURN(head.predicted_error, DoubleField(he, "predicted_error", hw));
        layer.heads.push_back(head);
      }
    } else {
      MOEND_ASSIGN_OR_RETURN(layer.tuple.keep, DoubleField(e, "keep", lw));
      MOEND_ASSIGN_OR_RETURN(layer.tuple.kbits, BitsField(e, "kbits", lw));
      MOEND_ASSIGN_OR_RETURN(layer.tuple.vbits, BitsField(e, "vbits", lw));
    }
    MOEND_ASSIGN_OR_RETURN(layer.bytes, IntField(e, "bytes", lw));
    MOEND_ASSIGN_OR_RETURN(layer.predicted_error, DoubleField(e, "predicted_error", lw));
    p.layers.push_back(layer);
  }
  MOEND_RETURN_IF_ERROR(p.Validate());
  return p;
}

std::string PlanToJson(const Plan& p) {
  // Ordered so that the file reads in the documented field order.
  nlohmann::ordered_json j;
  j["model"] = p.model;
  j["solver"] = p.solver;
  j["budget_bytes"] = p.budget_bytes;
  j["context"] = p.context;
  j["total_bytes"] = p.total_bytes;
  j["ratio"] = p.ratio;
  j["predicted_error"] = p.predicted_error;
  j["layers"] = nlohmann::ordered_json::array();
  for (const PlanLayer& l : p.layers) {
    nlohmann::ordered_json e;
    if (l.heads.empty()) {
      e = nlohmann::ordered_json{
          {"keep", l.tuple.keep}, {"kbits", l.tuple.kbits}, {"vbits", l.tuple.vbits}};
    } else {
      e["heads"] = nlohmann::ordered_json::array();
      for (const PlanHead& h : l.heads) {
        e["heads"].push_back(nlohmann::ordered_json{{"keep", h.tuple.keep},
                                                    {"kbits", h.tuple.kbits},
                                                    {"vbits", h.tuple.vbits},
                                                    {"bytes", h.bytes},
                                                    {"predicted_error", h.predicted_error}});
      }
    }
    e["bytes"] = l.bytes;
    e["predicted_error"] = l.predicted_error;
    j["layers"].push_back(std::move(e));
  }
  return j.dump(1) + "\n";
}

absl::StatusOr<Plan> ReadPlan(const std::string& path) {
  MOEND_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  absl::StatusOr<Plan> p = PlanFromJson(text);
  if (!p.ok()) {
    return absl::Status(p.status().code(), absl::StrCat(path, ": ", p.status().message()));
  }
  return p;
}

absl::Status WritePlan(const Plan& plan, const std::string& path) {
  MOEND_RETURN_IF_ERROR(plan.Validate());
  return WriteFileAtomic(path, PlanToJson(plan));
}

}  // namespace moend

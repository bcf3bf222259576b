#include "services/router/plan_convert.h"

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace moend::router {

v1::Plan ToProto(const VersionedPlan& p) {
  v1::Plan out;
  out.set_version(p.table_version);  // the same number: see VersionedPlan
  out.set_model(p.plan.model);
  out.set_solver(p.plan.solver);
  out.set_table_version(p.table_version);
  out.set_budget_bytes(p.plan.budget_bytes);
  out.set_context(p.plan.context);
  out.set_total_bytes(p.plan.total_bytes);
  out.set_full_bytes(static_cast<int64_t>(p.plan.layers.size()) *
                     FullLayerBytes({p.num_kv_heads, p.head_dim}, p.plan.context));
  out.set_ratio(p.plan.ratio);
  out.set_predicted_error(p.plan.predicted_error);
  out.mutable_layers()->Reserve(static_cast<int>(p.plan.layers.size()));
  for (size_t l = 0; l < p.plan.layers.size(); ++l) {
    const PlanLayer& layer = p.plan.layers[l];
    v1::LayerPlan* lp = out.add_layers();
    lp->set_layer(static_cast<int32_t>(l));
    if (layer.heads.empty()) {
      lp->set_keep(layer.tuple.keep);
      lp->set_kbits(layer.tuple.kbits);
      lp->set_vbits(layer.tuple.vbits);
    }
    lp->set_bytes(layer.bytes);
    lp->set_predicted_error(layer.predicted_error);
    lp->mutable_heads()->Reserve(static_cast<int>(layer.heads.size()));
    for (const PlanHead& head : layer.heads) {
      v1::HeadPlan* hp = lp->add_heads();
      hp->set_keep(head.tuple.keep);
      hp->set_kbits(head.tuple.kbits);
      hp->set_vbits(head.tuple.vbits);
      hp->set_bytes(head.bytes);
      hp->set_predicted_error(head.predicted_error);
    }
  }
  out.set_num_kv_heads(p.num_kv_heads);
  out.set_head_dim(p.head_dim);
  out.set_created_unix_micros(absl::ToUnixMicros(p.created));
  return out;
}

absl::StatusOr<VersionedPlan> PlanFromProto(const v1::Plan& p) {
  VersionedPlan out;
  out.table_version = p.table_version();
  out.num_kv_heads = p.num_kv_heads();
  out.head_dim = p.head_dim();
  out.created = absl::FromUnixMicros(p.created_unix_micros());
  out.plan.model = p.model();
  out.plan.solver = p.solver();
  out.plan.budget_bytes = p.budget_bytes();
  out.plan.context = p.context();
  out.plan.total_bytes = p.total_bytes();
  out.plan.ratio = p.ratio();
  out.plan.predicted_error = p.predicted_error();
  out.plan.layers.reserve(p.layers_size());
  for (int i = 0; i < p.layers_size(); ++i) {
    const v1::LayerPlan& lp = p.layers(i);
    if (lp.layer() != i) {
      return absl::InvalidArgumentError(
          absl::StrCat("plan layer ", i, " has index ", lp.layer(), "; layers must be in order"));
    }
    PlanLayer& layer = out.plan.layers.emplace_back();
    layer.bytes = lp.bytes();
    layer.predicted_error = lp.predicted_error();
    if (lp.heads().empty()) {
      layer.tuple = {lp.keep(), lp.kbits(), lp.vbits()};
      continue;
    }
    if (lp.heads_size() != p.num_kv_heads()) {
      return absl::InvalidArgumentError(absl::StrCat("plan layer ", i, " has ", lp.heads_size(),
                                                     " per-head tuples for ", p.num_kv_heads(),
                                                     " KV heads; give one per KV head or none"));
    }
    // A per-head layer's own tuple is unused; PlanFromJson leaves it default too.
    layer.heads.reserve(lp.heads().size());
    for (const v1::HeadPlan& hp : lp.heads()) {
      layer.heads.push_back({.tuple = {hp.keep(), hp.kbits(), hp.vbits()}, .bytes = hp.bytes(),
                             .predicted_error = hp.predicted_error()});
    }
  }
  if (out.num_kv_heads <= 0 || out.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("plan has KV shape (", out.num_kv_heads,
                                                   " heads, head dim ", out.head_dim,
                                                   "); both must be > 0"));
  }
  MOEND_RETURN_IF_ERROR(out.plan.Validate());
  return out;
}

v1::Budget ToProto(const Budget& b) {
  v1::Budget out;
  if (b.kind == Budget::Kind::kRatio) {
    out.set_ratio(b.ratio);
  } else {
    out.set_bytes(b.bytes);
  }
  out.set_context(b.context);
  return out;
}

absl::StatusOr<Budget> BudgetFromProto(const v1::Budget& p) {
  Budget b;
  switch (p.kind_case()) {
    case v1::Budget::kRatio:
      b = Budget::Ratio(p.ratio(), p.context());
      break;
    case v1::Budget::kBytes:
      b = Budget::Bytes(p.bytes(), p.context());
      break;
    default:
      return absl::InvalidArgumentError(
          "budget is missing; set budget.ratio (a compression ratio >= 1) or budget.bytes "
          "(> 0) with budget.context (tokens, > 0)");
  }
  MOEND_RETURN_IF_ERROR(b.Validate());
  return b;
}

}  // namespace moend::router

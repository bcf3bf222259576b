#include "clients/moendctl/output.h"

#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"
#include "clients/moendctl/commands.h"

namespace moend::ctl {

int FailWith(const char* command, const absl::Status& status) {
  std::fprintf(stderr, "moendctl %s: %s\n", command, std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? kExitUsage : kExitFailure;
}

void PrintPlan(const Plan& plan) {
  std::printf("model %s, solver %s, context %lld tokens\n", plan.model.c_str(),
              plan.solver.c_str(), static_cast<long long>(plan.context));
  std::printf("total %lld of %lld budget bytes, ratio %.3f, predicted error %.6g\n",
              static_cast<long long>(plan.total_bytes), static_cast<long long>(plan.budget_bytes),
              plan.ratio, plan.predicted_error);
  const bool per_head = plan.HeadsPerLayer() > 0;
  std::printf("%5s %7s %5s %5s %14s %12s%s\n", "layer", "keep", "kbits", "vbits", "bytes", "error",
              per_head ? "  heads (keep,kbits,vbits)" : "");
  for (size_t l = 0; l < plan.layers.size(); ++l) {
    const PlanLayer& layer = plan.layers[l];
    if (layer.heads.empty()) {
      std::printf("%5zu %7g %5d %5d %14lld %12.6g\n", l, layer.tuple.keep, layer.tuple.kbits,
                  layer.tuple.vbits, static_cast<long long>(layer.bytes), layer.predicted_error);
      continue;
    }
    std::string heads;
    for (const PlanHead& h : layer.heads) {
      absl::StrAppendFormat(&heads, "%s(%g,%d,%d)", heads.empty() ? "" : "/", h.tuple.keep,
                            h.tuple.kbits, h.tuple.vbits);
    }
    std::printf("%5zu %7s %5s %5s %14lld %12.6g  %s\n", l, "-", "-", "-",
                static_cast<long long>(layer.bytes), layer.predicted_error, heads.c_str());
  }
}

}  // namespace moend::ctl

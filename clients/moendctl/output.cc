#include "clients/moendctl/output.h"

#include <cstdio>
#include <string>

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
  std::printf("%5s %7s %5s %5s %14s %12s\n", "layer", "keep", "kbits", "vbits", "bytes", "error");
  for (size_t l = 0; l < plan.layers.size(); ++l) {
    const PlanLayer& layer = plan.layers[l];
    std::printf("%5zu %7g %5d %5d %14lld %12.6g\n", l, layer.tuple.keep, layer.tuple.kbits,
                layer.tuple.vbits, static_cast<long long>(layer.bytes), layer.predicted_error);
  }
}

}  // namespace moend::ctl

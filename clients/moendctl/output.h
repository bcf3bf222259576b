// Output and error helpers shared by the moendctl subcommands.
#ifndef MOEND_CLIENTS_MOENDCTL_OUTPUT_H_
#define MOEND_CLIENTS_MOENDCTL_OUTPUT_H_

#include "absl/status/status.h"
#include "core/plan.h"

namespace moend::ctl {

// Prints "moendctl <command>: <message>" on stderr; returns kExitUsage for
// InvalidArgument, kExitFailure otherwise.
int FailWith(const char* command, const absl::Status& status);

// A plan as a human table on stdout; a per-head layer prints "-" for its
// tuple and its heads' tuples as "(0.25,2,4)/(1,4,4)/...".
void PrintPlan(const Plan& plan);

}  // namespace moend::ctl

#endif  // MOEND_CLIENTS_MOENDCTL_OUTPUT_H_

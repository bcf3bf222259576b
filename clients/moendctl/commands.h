// moendctl subcommands. Each lives in its own cmd_<name>.cc and returns the
// process exit code: 0 success, 1 the operation failed, 2 bad usage.
#ifndef MOEND_CLIENTS_MOENDCTL_COMMANDS_H_
#define MOEND_CLIENTS_MOENDCTL_COMMANDS_H_

namespace moend::ctl {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// argv[0] is the first argument after the subcommand name.
int RunLogits(int argc, char** argv);
int RunPredict(int argc, char** argv);
int RunCalibrate(int argc, char** argv);
int RunPublish(int argc, char** argv);
int RunEval(int argc, char** argv);
int RunPlan(int argc, char** argv);
int RunGenerate(int argc, char** argv);
int RunSolve(int argc, char** argv);

}  // namespace moend::ctl

#endif  // MOEND_CLIENTS_MOENDCTL_COMMANDS_H_

// moendctl: the moend command line.
#include <cstdio>
#include <cstring>
#include <string>

#include "clients/moendctl/commands.h"

namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
};

constexpr Command kCommands[] = {
    {"predict", "run the model forward on a sample; print next-byte predictions and speed",
     moend::ctl::RunPredict},
    {"calibrate", "measure a model's per-layer sensitivity table on calibration data",
     moend::ctl::RunCalibrate},
    {"eval", "retrieval accuracy and bits per byte of plans with the real compressed cache",
     moend::ctl::RunEval},
    {"logits", "write float32 next-byte logits [n, vocab] for an input file",
     moend::ctl::RunLogits},
    {"publish", "store a sensitivity table in a registry as its model's newest version",
     moend::ctl::RunPublish},
    {"plan", "ask a running router for the plan of a (model, budget)", moend::ctl::RunPlan},
    {"generate", "generate text on a running inference node", moend::ctl::RunGenerate},
    {"solve", "choose a per-layer compression plan for a sensitivity table under a budget",
     moend::ctl::RunSolve},
};

void PrintUsage(FILE* out) {
  std::fprintf(out, "usage: moendctl <command> [flags]   (moendctl <command> --help)\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(stderr);
    return moend::ctl::kExitUsage;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    PrintUsage(stdout);
    return moend::ctl::kExitOk;
  }
  for (const Command& c : kCommands) {
    if (name == c.name) return c.run(argc - 2, argv + 2);
  }
  std::fprintf(stderr, "moendctl: unknown command '%s'\n", name.c_str());
  PrintUsage(stderr);
  return moend::ctl::kExitUsage;
}

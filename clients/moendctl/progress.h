// A terminal progress bar on stderr (a plain line per update when stderr is
// not a terminal).
#ifndef MOEND_CLIENTS_MOENDCTL_PROGRESS_H_
#define MOEND_CLIENTS_MOENDCTL_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <string>

namespace moend::ctl {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  // Shows done/total with elapsed time and an estimate of the time left.
  void Update(int64_t done, int64_t total);
  // Ends the line.
  void Finish();

 private:
  std::string label_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace moend::ctl

#endif  // MOEND_CLIENTS_MOENDCTL_PROGRESS_H_

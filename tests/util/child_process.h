// A child process for integration tests: the real binary, its stdout and
// stderr going to a log file that tests can wait on, killed at destruction.
#ifndef MOEND_TESTS_UTIL_CHILD_PROCESS_H_
#define MOEND_TESTS_UTIL_CHILD_PROCESS_H_

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace moend::testing {

class ChildProcess {
 public:
  // Starts `binary` with `args`; output goes to `log_path`. `env` entries
  // ("NAME=value") are added to the environment.
  ChildProcess(const std::string& binary, std::vector<std::string> args, std::string log_path,
               std::vector<std::string> env = {})
      : log_path_(std::move(log_path)) {
    pid_ = ::fork();
    if (pid_ == 0) {
      FILE* log = std::fopen(log_path_.c_str(), "w");
      if (log != nullptr) {
        ::dup2(::fileno(log), 1);
        ::dup2(::fileno(log), 2);
      }
      for (std::string& e : env) ::putenv(e.data());
      std::vector<char*> argv;
      std::string bin = binary;
      argv.push_back(bin.data());
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    }
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  bool started() const { return pid_ > 0; }

  std::string Log() const {
    std::ifstream f(log_path_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  // Waits until the log holds `marker`; returns the rest of that line, or ""
  // after `timeout` or if the process ended.
  std::string WaitForLine(const std::string& marker, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      std::string log = Log();
      if (size_t at = log.find(marker); at != std::string::npos) {
        size_t end = log.find('\n', at);
        return log.substr(at + marker.size(),
                          end == std::string::npos ? std::string::npos : end - at - marker.size());
      }
      if (Exited()) return "";
      absl::SleepFor(absl::Milliseconds(20));
    }
    return "";
  }

  // Sends `sig` (0: none) and waits up to `timeout` for the exit; returns the
  // waitpid status, or -1 if still running.
  int Signal(int sig, absl::Duration timeout) {
    if (reaped_) return status_;
    if (sig != 0) ::kill(pid_, sig);
    const absl::Time deadline = absl::Now() + timeout;
    do {
      if (Exited()) return status_;
      absl::SleepFor(absl::Milliseconds(10));
    } while (absl::Now() < deadline);
    return -1;
  }
  int WaitExit(absl::Duration timeout) { return Signal(0, timeout); }

 private:
  bool Exited() {
    if (reaped_) return true;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      reaped_ = true;
      status_ = status;
    }
    return reaped_;
  }

  std::string log_path_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

}  // namespace moend::testing

#endif  // MOEND_TESTS_UTIL_CHILD_PROCESS_H_

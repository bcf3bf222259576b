// A child process for integration tests: the real binary, its stdout and
// stderr going to a log file that tests can wait on, killed at destruction.
#ifndef MOEND_TESTS_UTIL_CHILD_PROCESS_H_
#define MOEND_TESTS_UTIL_CHILD_PROCESS_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
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
      // Its own process group, whose parent (this test) is in another group
      // of the same session: the group is never orphaned, so the kernel never
      // sends SIGHUP to a child a test has stopped (SIGSTOP) when some other
      // process of the test's group exits (seen in CI: a stopped moend-worker
      // killed by SIGHUP under `ctest -j2`).
      ::setpgid(0, 0);
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
    if (pid_ > 0) ::setpgid(pid_, pid_);  // both sides, so no exec or kill races it
  }
  // Output goes to a fresh temporary file, removed at destruction.
  ChildProcess(const std::string& binary, std::vector<std::string> args)
      : ChildProcess(binary, std::move(args), TempLogPath()) {
    remove_log_ = true;
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (remove_log_) std::remove(log_path_.c_str());
  }

  bool started() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  std::string output() const { return Log(); }
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

  static std::string TempLogPath() {
    char path[] = "/tmp/moend_child_XXXXXX";
    const int fd = ::mkstemp(path);
    if (fd >= 0) ::close(fd);
    return path;
  }

  std::string log_path_;
  bool remove_log_ = false;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

// GET http://address/path over a plain socket; the whole response, or "".
inline std::string HttpGet(const std::string& address, const std::string& path) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) return "";
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, address.substr(0, colon).c_str(), &addr.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "";
  }
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: x\r\n\r\n";
  if (::write(fd, request.data(), request.size()) < 0) {
    ::close(fd);
    return "";
  }
  std::string response;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) response.append(buf, n);
  ::close(fd);
  return response;
}

}  // namespace moend::testing

#endif  // MOEND_TESTS_UTIL_CHILD_PROCESS_H_

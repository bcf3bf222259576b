// Real file-system faults for tests, without touching the host: the test
// process moves into a private mount namespace (children inherit it) and
// mounts small tmpfs folders there (a full disk is a real ENOSPC) or
// read-only bind mounts (EROFS even for root). Needs CAP_SYS_ADMIN, which a
// root test run in a container normally has; Enter() says why when not.
#ifndef MOEND_TESTS_UTIL_MOUNT_SANDBOX_H_
#define MOEND_TESTS_UTIL_MOUNT_SANDBOX_H_

#include <sched.h>
#include <sys/mount.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace moend::testing {

class MountSandbox {
 public:
  // Moves this process into a private mount namespace (once). Returns "" on
  // success, else why it is not possible here.
  static std::string Enter() {
    static const std::string error = [] {
      if (::unshare(CLONE_NEWNS) != 0) {
        return absl::StrCat("unshare(CLONE_NEWNS): ", std::strerror(errno),
                            " (needs CAP_SYS_ADMIN)");
      }
      if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
        return absl::StrCat("making / private: ", std::strerror(errno));
      }
      return std::string();
    }();
    return error;
  }

  // Mounts a tmpfs of `bytes` on the existing folder `dir`.
  static std::string MountTmpfs(const std::string& dir, int64_t bytes) {
    const std::string data = absl::StrCat("size=", bytes, ",mode=0755");
    if (::mount("moend-test", dir.c_str(), "tmpfs", 0, data.c_str()) != 0) {
      return absl::StrCat("mount tmpfs on ", dir, ": ", std::strerror(errno));
    }
    return "";
  }

  // Makes `target` (an existing folder) a read-only view of `source`.
  static std::string BindReadOnly(const std::string& source, const std::string& target) {
    if (::mount(source.c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0) {
      return absl::StrCat("bind ", source, " on ", target, ": ", std::strerror(errno));
    }
    if (::mount(nullptr, target.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr) !=
        0) {
      return absl::StrCat("remount ", target, " read-only: ", std::strerror(errno));
    }
    return "";
  }
};

// Unmounts `dir` when it goes out of scope (declare it after the TempDir
// that holds `dir`, so that the folder can be removed).
class ScopedUnmount {
 public:
  explicit ScopedUnmount(std::string dir) : dir_(std::move(dir)) {}
  ~ScopedUnmount() { ::umount2(dir_.c_str(), MNT_DETACH); }
  ScopedUnmount(const ScopedUnmount&) = delete;
  ScopedUnmount& operator=(const ScopedUnmount&) = delete;

 private:
  std::string dir_;
};

}  // namespace moend::testing

#endif  // MOEND_TESTS_UTIL_MOUNT_SANDBOX_H_

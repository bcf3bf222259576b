// The real binaries on loopback for integration tests: a moend-registry on a
// temporary RocksDB folder with the shipped model registered, and
// moend-router processes in front of it. All ports are chosen by the kernel
// (port 0) and read from the binaries' "listening on" lines.
#ifndef MOEND_TESTS_ROUTER_LOOPBACK_STACK_H_
#define MOEND_TESTS_ROUTER_LOOPBACK_STACK_H_

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "services/registry/registry_client.h"
#include "tests/router/router_test_util.h"
#include "tests/storage/temp_dir.h"
#include "tests/util/child_process.h"

namespace moend::router::testing {

using ::moend::testing::ChildProcess;
using ::moend::testing::HttpGet;

// How long to wait for a binary to come up; a failure guard, not a goal.
inline constexpr absl::Duration kStartupPatience = absl::Seconds(30);

class LoopbackStack {
 public:
  // Starts the registry and registers "tinycode" (models/tinycode/config.json).
  // `extra` flags go to moend-registry.
  void StartRegistry(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--db", dir_.Sub("db"), "--listen", "127.0.0.1:0"};
    args.insert(args.end(), extra.begin(), extra.end());
    registry_ = std::make_unique<ChildProcess>(MOEND_REGISTRY_BIN, args);
    registry_address_ = registry_->WaitForLine("listening on ", kStartupPatience);
    ASSERT_FALSE(registry_address_.empty()) << registry_->output();
    auto client = registry::RegistryClient::Connect({.target = registry_address_});
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(client).value();
    auto model = client_->RegisterModelFromFile(
        "tinycode", std::string(MOEND_SOURCE_DIR) + "/models/tinycode/config.json");
    ASSERT_TRUE(model.ok()) << model.status();
  }

  // Starts a router on `listen` (port 0 = any); returns its address, "" on
  // failure. `metrics` non-empty adds --metrics and fills *metrics_address.
  // `extra` flags go to moend-router.
  std::string StartRouter(const std::string& listen = "127.0.0.1:0",
                          std::string* metrics_address = nullptr,
                          std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--registry", registry_address_, "--listen", listen,
                                     "--watch-poll-ms", "500"};
    args.insert(args.end(), extra.begin(), extra.end());
    if (metrics_address) {
      args.push_back("--metrics");
      args.push_back("127.0.0.1:0");
    }
    router_ = std::make_unique<ChildProcess>(MOEND_ROUTER_BIN, args);
    std::string address = router_->WaitForLine("listening on ", kStartupPatience);
    if (metrics_address) {
      std::string line = router_->WaitForLine("metrics on http://", kStartupPatience);
      *metrics_address = line.substr(0, line.find('/'));
    }
    return address;
  }

  // Publishes MakeTable("tinycode", seed); returns the new version (0 on error).
  uint64_t Publish(int seed) { return Publish(MakeTable("tinycode", seed)); }
  // Publishes `table`; returns the new version (0 on error).
  uint64_t Publish(const SensitivityTable& table) {
    auto version = client_->PublishTable(table);
    EXPECT_TRUE(version.ok()) << version.status();
    return version.ok() ? *version : 0;
  }

  ChildProcess& router() { return *router_; }
  void DropRouter() { router_.reset(); }  // SIGKILL
  const std::string& registry_address() const { return registry_address_; }
  pid_t registry_pid() const { return registry_->pid(); }

 private:
  moend::testing::TempDir dir_;
  std::unique_ptr<ChildProcess> registry_;
  std::string registry_address_;
  std::unique_ptr<registry::RegistryClient> client_;
  std::unique_ptr<ChildProcess> router_;
};

}  // namespace moend::router::testing

#endif  // MOEND_TESTS_ROUTER_LOOPBACK_STACK_H_

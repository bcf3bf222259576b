// Where the router gets sensitivity tables and learns of new versions. The
// production source is the registry (RegistryTableSource); tests inject a
// fake. Implementations must be thread-safe.
#ifndef MOEND_SERVICES_ROUTER_TABLE_SOURCE_H_
#define MOEND_SERVICES_ROUTER_TABLE_SOURCE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/registry/registry_client.h"
#include "services/registry/registry_types.h"

namespace moend::router {

class TableSource {
 public:
  virtual ~TableSource() = default;

  // Table `version` of `model`; 0 = the latest. NotFound for an unknown
  // model, a model without tables, or a version that does not exist (the
  // message says which); Unavailable when the source cannot be reached.
  virtual absl::StatusOr<registry::VersionedTable> GetTable(const std::string& model,
                                                            uint64_t version) = 0;

  // Blocks until `model` has a version > `after_version` and returns it (the
  // next one, not necessarily the newest); DeadlineExceeded after `timeout`.
  virtual absl::StatusOr<uint64_t> WaitForVersion(const std::string& model, uint64_t after_version,
                                                  absl::Duration timeout) = 0;
};

// The registry as a table source, over its C++ client (not owned).
class RegistryTableSource final : public TableSource {
 public:
  explicit RegistryTableSource(registry::RegistryClient* client) : client_(client) {}

  absl::StatusOr<registry::VersionedTable> GetTable(const std::string& model,
                                                    uint64_t version) override {
    return client_->GetTable(model, version);
  }
  absl::StatusOr<uint64_t> WaitForVersion(const std::string& model, uint64_t after_version,
                                          absl::Duration timeout) override {
    absl::StatusOr<registry::VersionEvent> event =
        client_->WaitForVersion(model, after_version, timeout);
    if (!event.ok()) return event.status();
    return event->version;
  }

 private:
  registry::RegistryClient* const client_;
};

}  // namespace moend::router

#endif  // MOEND_SERVICES_ROUTER_TABLE_SOURCE_H_

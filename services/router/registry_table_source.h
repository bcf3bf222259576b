// The registry as the router's table source, over the registry's C++ client
// (one long-lived change-feed stream per watched model: see
// RegistryClient::WaitForVersion).
#ifndef MOEND_SERVICES_ROUTER_REGISTRY_TABLE_SOURCE_H_
#define MOEND_SERVICES_ROUTER_REGISTRY_TABLE_SOURCE_H_

#include <cstdint>
#include <string>

#include "services/registry/registry_client.h"
#include "services/router/table_source.h"

namespace moend::router {

class RegistryTableSource final : public TableSource {
 public:
  // `client` is not owned and must outlive the source.
  explicit RegistryTableSource(registry::RegistryClient* client) : client_(client) {}

  absl::StatusOr<registry::VersionedTable> GetTable(const std::string& model,
                                                    uint64_t version) override;
  absl::StatusOr<uint64_t> WaitForVersion(const std::string& model, uint64_t after_version,
                                          absl::Duration timeout) override;

 private:
  registry::RegistryClient* const client_;
};

}  // namespace moend::router

#endif  // MOEND_SERVICES_ROUTER_REGISTRY_TABLE_SOURCE_H_

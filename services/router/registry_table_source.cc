#include "services/router/registry_table_source.h"

namespace moend::router {

absl::StatusOr<registry::VersionedTable> RegistryTableSource::GetTable(const std::string& model,
                                                                       uint64_t version) {
  return client_->GetTable(model, version);
}

absl::StatusOr<uint64_t> RegistryTableSource::WaitForVersion(const std::string& model,
                                                             uint64_t after_version,
                                                             absl::Duration timeout) {
  absl::StatusOr<registry::VersionEvent> event =
      client_->WaitForVersion(model, after_version, timeout);
  if (!event.ok()) return event.status();
  return event->version;
}

}  // namespace moend::router

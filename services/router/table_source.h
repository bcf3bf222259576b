// Where the router gets sensitivity tables and learns of new versions: the
// seam between the router's core and the registry. No gRPC here; the
// production source is the registry over its client
// (registry_table_source.h); tests and benchmarks inject their own.
// Implementations must be thread-safe.
#ifndef MOEND_SERVICES_ROUTER_TABLE_SOURCE_H_
#define MOEND_SERVICES_ROUTER_TABLE_SOURCE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
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

  // Blocks until `model` has a version > `after_version` and returns one
  // such version (not necessarily the newest); DeadlineExceeded after
  // `timeout`.
  virtual absl::StatusOr<uint64_t> WaitForVersion(const std::string& model, uint64_t after_version,
                                                  absl::Duration timeout) = 0;
};

}  // namespace moend::router

#endif  // MOEND_SERVICES_ROUTER_TABLE_SOURCE_H_

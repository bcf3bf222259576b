// Whole-file reads and atomic writes with Status errors that name the path.
#ifndef MOEND_CORE_FILE_UTIL_H_
#define MOEND_CORE_FILE_UTIL_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moend {

// The whole file as bytes; NotFound / PermissionDenied / DataLoss naming `path`.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Writes `data` to `path` through a temporary file and a rename, so a reader
// never sees a half-written file.
absl::Status WriteFileAtomic(const std::string& path, std::string_view data);

}  // namespace moend

#endif  // MOEND_CORE_FILE_UTIL_H_

#include "runtime/token_file.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status_macros.h"

namespace moend {

absl::StatusOr<std::vector<int32_t>> DecodeTokenFile(std::string_view contents, const std::string& path) {
  std::vector<int32_t> ids;
  if (contents.substr(0, kTokenFileMagic.size()) != kTokenFileMagic) {
    ids.reserve(contents.size());
    for (char c : contents) ids.push_back(static_cast<unsigned char>(c));
    return ids;
  }
  const std::string_view payload = contents.substr(kTokenFileMagic.size());
  if (payload.size() % 4 != 0) {
    return absl::DataLossError(absl::StrCat(path, ": token-id file of ", contents.size(),
                                            " bytes: after the 8-byte header the size must be a multiple "
                                            "of 4 (uint32 ids); truncated?"));
  }
  ids.resize(payload.size() / 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto* b = reinterpret_cast<const unsigned char*>(payload.data() + 4 * i);
    const uint32_t id = b[0] | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
    if (id > uint32_t{INT32_MAX}) {
      return absl::DataLossError(
          absl::StrCat(path, ": token id ", id, " at position ", i, " is above ", INT32_MAX));
    }
    ids[i] = static_cast<int32_t>(id);
  }
  return ids;
}

absl::StatusOr<std::vector<int32_t>> ReadTokenFile(const std::string& path) {
  MOEND_ASSIGN_OR_RETURN(const std::string contents, ReadFile(path));
  return DecodeTokenFile(contents, path);
}

std::string EncodeTokenFile(std::span<const int32_t> ids) {
  std::string out(kTokenFileMagic);
  out.reserve(out.size() + 4 * ids.size());
  for (int32_t id : ids) {
    const uint32_t u = static_cast<uint32_t>(id);
    const char b[4] = {static_cast<char>(u & 0xff), static_cast<char>(u >> 8 & 0xff),
                       static_cast<char>(u >> 16 & 0xff), static_cast<char>(u >> 24)};
    out.append(b, 4);
  }
  return out;
}

absl::Status CheckTokenIds(std::span<const int32_t> ids, int64_t vocab_size, const std::string& what) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": token id ", ids[i], " at position ", i,
                                                     " is outside the model's vocabulary [0, ", vocab_size,
                                                     ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace moend

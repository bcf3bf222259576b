// Token ids stored in a file: moend's token-id format, or one token per byte.
//
// Token-id format (for vocabularies beyond 256): the 8 bytes
// 0x93 'M' 'O' 'E' 'T' 'O' 'K' 0x01, then the ids as uint32 little endian,
// nothing else (the file size minus 8 is a multiple of 4). Any file that does
// not start with those 8 bytes holds one token per byte (ids 0..255), as the
// shipped byte-level model reads text. scripts/make_synthetic_model.py
// --tokens writes the format.
#ifndef MOEND_RUNTIME_TOKEN_FILE_H_
#define MOEND_RUNTIME_TOKEN_FILE_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moend {

inline constexpr std::string_view kTokenFileMagic{"\x93MOETOK\x01", 8};

// The ids of `contents` (the bytes of file `path`, named in errors).
// DataLoss when a token-id file's payload is not whole uint32s or an id is
// above INT32_MAX.
absl::StatusOr<std::vector<int32_t>> DecodeTokenFile(std::string_view contents,
                                                     const std::string& path);
// ReadFile + DecodeTokenFile.
absl::StatusOr<std::vector<int32_t>> ReadTokenFile(const std::string& path);
// The token-id format of `ids` (each >= 0).
std::string EncodeTokenFile(std::span<const int32_t> ids);

// InvalidArgument naming `what`, the position and the id when an id is outside
// [0, vocab_size).
absl::Status CheckTokenIds(std::span<const int32_t> ids, int64_t vocab_size, const std::string& what);

}  // namespace moend

#endif  // MOEND_RUNTIME_TOKEN_FILE_H_

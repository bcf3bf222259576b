#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/file_util.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace moend {
namespace {

// A header beyond this is not a real checkpoint (the largest seen are a few MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// Elements of one tensor, and of each dimension (2^50; far above any model).
constexpr uint64_t kMaxElements = uint64_t{1} << 50;

int64_t DTypeSize(DType d) { return d == DType::kF32 ? 4 : 2; }

absl::StatusOr<DType> ParseDType(const std::string& s) {
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  return absl::UnimplementedError(
      absl::StrCat("dtype ", s, " is not supported (supported: F32, F16, BF16)"));
}

}  // namespace

int64_t TensorView::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("cannot stat ", path));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return absl::DataLossError(
        absl::StrCat(path, ": truncated: ", size, " bytes, shorter than the 8-byte header length"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::UnavailableError(absl::StrCat("cannot map ", path, ": ", std::strerror(errno)));
  }
  file->map_ = map;
  file->map_size_ = size;
  const auto* bytes = static_cast<const uint8_t*>(map);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeaderBytes || header_len > size - 8) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", header_len,
                                            " overruns the file (", size, " bytes): truncated?"));
  }
  nlohmann::json header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_len, nullptr,
                                                /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": header is not a JSON object"));
  }
  const uint8_t* data = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  std::vector<std::string> range_names;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string& name = it.key();
    const nlohmann::json& info = it.value();
    auto bad = [&](const std::string& why) {
      return absl::DataLossError(absl::StrCat(path, ": tensor ", name, ": ", why));
    };
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") ||
        !info.contains("data_offsets") || !info["dtype"].is_string() ||
        !info["shape"].is_array() || !info["data_offsets"].is_array() ||
        info["data_offsets"].size() != 2) {
      return bad("header entry needs dtype, shape and data_offsets [begin, end]");
    }
    absl::StatusOr<DType> dtype = ParseDType(info["dtype"].get<std::string>());
    if (!dtype.ok()) {
      return absl::Status(dtype.status().code(),
                          absl::StrCat(path, ": tensor ", name, ": ", dtype.status().message()));
    }
    TensorView t;
    t.name = name;
    t.dtype = *dtype;
    uint64_t elements = 1;
    for (const auto& d : info["shape"]) {
      if (!d.is_number_unsigned()) return bad("shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      // Checked on its own too: after a 0 dimension the product stays 0, but a
      // dimension beyond int64 would still turn negative in `shape`.
      if (dim > kMaxElements || (dim != 0 && elements > kMaxElements / dim)) {
        return bad("shape is absurdly large");
      }
      elements *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = info["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      return bad("data_offsets must be non-negative integers");
    }
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return bad(absl::StrCat("data_offsets [", begin, ", ", end, ") overrun the data section (",
                              data_size, " bytes): file truncated or header corrupt"));
    }
    const uint64_t want = elements * static_cast<uint64_t>(DTypeSize(t.dtype));
    if (end - begin != want) {
      return bad(absl::StrCat("data_offsets span ", end - begin, " bytes but shape x dtype needs ",
                              want));
    }
    t.data = data + begin;
    t.num_bytes = static_cast<int64_t>(want);
    ranges.push_back({begin, end});
    range_names.push_back(name);
    file->tensors_.emplace(name, std::move(t));
  }
  std::vector<size_t> order(ranges.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  for (size_t i = 1; i < order.size(); ++i) {
    const auto& prev = ranges[order[i - 1]];
    const auto& cur = ranges[order[i]];
    if (cur.first < prev.second && cur.second > cur.first) {
      return absl::DataLossError(absl::StrCat(path, ": tensors ", range_names[order[i - 1]],
                                              " and ", range_names[order[i]],
                                              " overlap in the data section"));
    }
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  auto ckpt = std::make_unique<Checkpoint>();
  ckpt->dir_ = dir;
  std::vector<std::string> shard_names;
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single_path = fs::path(dir) / "model.safetensors";
  std::map<std::string, std::string> weight_map;
  if (fs::exists(index_path)) {
    MOEND_ASSIGN_OR_RETURN(std::string text, ReadFile(index_path.string()));
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
        !j["weight_map"].is_object()) {
      return absl::DataLossError(
          absl::StrCat(index_path.string(), ": expected a JSON object with a weight_map object"));
    }
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) {
        return absl::DataLossError(absl::StrCat(index_path.string(), ": weight_map entry ",
                                                it.key(), " is not a file name"));
      }
      const std::string shard = it.value().get<std::string>();
      if (shard.find('/') != std::string::npos || shard.find("..") != std::string::npos) {
        return absl::DataLossError(absl::StrCat(index_path.string(), ": shard name '", shard,
                                                "' must be a plain file name"));
      }
      weight_map[it.key()] = shard;
      if (std::find(shard_names.begin(), shard_names.end(), shard) == shard_names.end()) {
        shard_names.push_back(shard);
      }
    }
  } else if (fs::exists(single_path)) {
    shard_names.push_back("model.safetensors");
  } else {
    return absl::NotFoundError(absl::StrCat(
        dir, ": no model.safetensors or model.safetensors.index.json (only safetensors "
             "checkpoints are supported)"));
  }
  for (const std::string& shard : shard_names) {
    MOEND_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open((fs::path(dir) / shard).string()));
    for (const auto& [name, view] : file->tensors()) {
      if (!weight_map.empty()) {
        auto it = weight_map.find(name);
        if (it == weight_map.end() || it->second != shard) continue;  // not this shard's copy
      }
      if (ckpt->index_.count(name)) {
        return absl::DataLossError(
            absl::StrCat(dir, ": tensor ", name, " appears in more than one shard"));
      }
      ckpt->index_[name] = &view;
      ckpt->file_of_[name] = file->path();
    }
    ckpt->files_.push_back(std::move(file));
  }
  for (const auto& [name, shard] : weight_map) {
    if (!ckpt->index_.count(name)) {
      return absl::DataLossError(absl::StrCat(index_path.string(), ": tensor ", name,
                                              " is mapped to ", shard, " but that file lacks it"));
    }
  }
  return ckpt;
}

absl::StatusOr<const TensorView*> Checkpoint::Get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat(dir_, ": missing tensor ", name));
  }
  return it->second;
}

std::string Checkpoint::FileOf(const std::string& name) const {
  auto it = file_of_.find(name);
  return it == file_of_.end() ? dir_ : it->second;
}

void ToFloat32(const TensorView& t, float* out) {
  const int64_t n = t.num_elements();
  if (n == 0) return;  // `out` may be null then (an empty vector's data())
  switch (t.dtype) {
    case DType::kF32:
      std::memcpy(out, t.data, static_cast<size_t>(n) * 4);
      break;
    case DType::kBF16:
#pragma omp parallel for if (n > (int64_t{1} << 20))
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(&out[i], &bits, 4);
      }
      break;
    case DType::kF16:
#pragma omp parallel for if (n > (int64_t{1} << 20))
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        out[i] = HalfToFloat(h);
      }
      break;
  }
}

}  // namespace moend

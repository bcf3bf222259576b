// Fuzzes SafetensorsFile::Open (runtime/safetensors.h): the input is a whole
// .safetensors file. Whatever Open accepts must describe tensors that lie
// inside the file, with sizes equal to shape x dtype; every byte of every
// tensor is read (ASan catches a view that points outside the mapping).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/safetensors.h"
#include "fuzz/fuzz_util.h"

namespace {

// The input goes to an in-memory file, opened by path like a checkpoint.
int MemFd() {
  static const int fd = [] {
    int fd = ::memfd_create("fuzz.safetensors", MFD_CLOEXEC);
    if (fd < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    return fd;
  }();
  return fd;
}

// A safetensors file: 8-byte little-endian header length, header, data.
std::string File(const std::string& header, const std::string& data) {
  std::string out;
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return out + header + data;
}

std::string Bytes(size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) out.push_back(static_cast<char>(i * 37 + 11));
  return out;
}

std::vector<moend::fuzz::Seed> MakeSeeds() {
  return {
      {"f32_2x3", File(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})", Bytes(24))},
      {"bf16_f16_metadata",
       File(R"({"__metadata__":{"format":"pt"},)"
            R"("model.layers.0.self_attn.k_proj.weight":{"dtype":"BF16","shape":[4,2],"data_offsets":[0,16]},)"
            R"("model.norm.weight":{"dtype":"F16","shape":[4],"data_offsets":[16,24]}})",
            Bytes(24))},
      {"scalar_and_empty",
       File(R"({"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},)"
            R"("e":{"dtype":"F16","shape":[0,7],"data_offsets":[4,4]}})",
            Bytes(4))},
      {"unsupported_dtype",
       File(R"({"i":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}})", Bytes(2))},
  };
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  moend::fuzz::MaybeWriteSeeds(*argc, *argv, MakeSeeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = MemFd();
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) {
    std::perror("writing the memfd");
    std::abort();
  }
  const std::string path = absl::StrCat("/proc/self/fd/", fd);
  auto file = moend::SafetensorsFile::Open(path);
  if (!file.ok()) {
    FUZZ_CHECK(!file.status().message().empty(), "an error without a message");
    return 0;
  }
  uint64_t total = 0;
  std::vector<float> widened;
  for (const auto& [name, t] : (*file)->tensors()) {
    FUZZ_CHECK(name == t.name, "tensor map key differs from the view's name");
    int64_t elements = 1;
    for (int64_t d : t.shape) {
      FUZZ_CHECK(d >= 0, absl::StrCat(name, ": negative dimension ", d));
      elements *= d;
    }
    FUZZ_CHECK(elements == t.num_elements(), "num_elements() is not the shape's product");
    const int64_t dsize = t.dtype == moend::DType::kF32 ? 4 : 2;
    FUZZ_CHECK(t.num_bytes == elements * dsize, absl::StrCat(name, ": num_bytes ", t.num_bytes,
                                                             " != elements x dtype size"));
    FUZZ_CHECK(static_cast<uint64_t>(t.num_bytes) <= size, "a tensor larger than the file");
    total += static_cast<uint64_t>(t.num_bytes);
    FUZZ_CHECK(total <= size, "tensors together larger than the file (overlap)");
    uint8_t x = 0;
    for (int64_t i = 0; i < t.num_bytes; ++i) x ^= t.data[i];
    widened.resize(static_cast<size_t>(elements));
    moend::ToFloat32(t, widened.data());
    if (x == 0x5a && !widened.empty()) widened[0] += 1;  // keep the reads observable
  }
  return 0;
}

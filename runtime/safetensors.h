// Reader for the safetensors format (a little-endian u64 header length, a JSON
// header of tensor name -> {dtype, shape, data_offsets}, then the data) and for
// Hugging Face sharded checkpoints (model.safetensors.index.json).
#ifndef MOEND_RUNTIME_SAFETENSORS_H_
#define MOEND_RUNTIME_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/fp16.h"

namespace moend {

enum class DType { kF32, kF16, kBF16 };

// One tensor's metadata; `data` points into the mapped file.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  int64_t num_bytes = 0;

  int64_t num_elements() const;
};

// A memory-mapped safetensors file. Open() validates the whole header: JSON
// well-formed, supported dtypes, offsets inside the data section, sizes equal
// to shape x dtype size, no two tensors overlapping.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
};

// All tensors of a checkpoint folder: model.safetensors, or the shards named by
// model.safetensors.index.json. Looking up a missing tensor is NotFound naming
// the folder and the tensor.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  bool Has(const std::string& name) const { return index_.count(name) > 0; }
  absl::StatusOr<const TensorView*> Get(const std::string& name) const;
  // Path of the file holding `name`, for error messages.
  std::string FileOf(const std::string& name) const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
  std::map<std::string, std::string> file_of_;
};

// Widens `t` to float32 into `out` (t.num_elements() floats). BF16 and F16
// convert exactly; large tensors on all OpenMP threads.
void ToFloat32(const TensorView& t, float* out);

}  // namespace moend

#endif  // MOEND_RUNTIME_SAFETENSORS_H_

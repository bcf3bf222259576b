#include "fuzz/fuzz_util.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "core/sensitivity_table.h"

namespace moend::fuzz {

void Fail(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "\n%s:%d: FUZZ_CHECK failed: %s\n", file, line, what.c_str());
  std::fflush(stderr);
  __builtin_trap();
}

std::string ReadSourceFile(const std::string& relative_path) {
  const std::string path = std::string(MOEND_SOURCE_DIR) + "/" + relative_path;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "fuzz: cannot read %s\n", path.c_str());
    std::abort();
  }
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string TrimmedShippedTableJson(int layers, int tuple_stride) {
  auto table =
      SensitivityTableFromJson(ReadSourceFile("data/tables/tinycode_calibration_4096x16.json"));
  if (!table.ok()) {
    std::fprintf(stderr, "fuzz: the shipped table: %s\n", table.status().ToString().c_str());
    std::abort();
  }
  SensitivityTable small = *table;
  small.num_layers = layers;
  small.s.resize(static_cast<size_t>(layers));
  small.tuples.clear();
  for (auto& row : small.s) row.clear();
  for (size_t i = 0; i < table->tuples.size(); i += static_cast<size_t>(tuple_stride)) {
    small.tuples.push_back(table->tuples[i]);
    for (int l = 0; l < layers; ++l) small.s[l].push_back(table->s[l][i]);
  }
  return SensitivityTableToJson(small);
}

void MaybeWriteSeeds(int argc, char** argv, std::vector<Seed> (*make)()) {
  constexpr char kFlag[] = "--write-seeds=";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind(kFlag, 0) != 0) continue;
    const std::filesystem::path dir = arg.substr(sizeof(kFlag) - 1);
    std::filesystem::create_directories(dir);
    for (const auto& [name, bytes] : make()) {
      std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      if (!out) {
        std::fprintf(stderr, "cannot write %s\n", (dir / name).c_str());
        std::exit(1);
      }
      std::printf("%s (%zu bytes)\n", (dir / name).c_str(), bytes.size());
    }
    std::exit(0);
  }
}

}  // namespace moend::fuzz

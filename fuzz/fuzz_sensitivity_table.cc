// Fuzzes SensitivityTableFromJson (core/sensitivity_table.h): the input is a
// table's JSON text. A table it accepts passes Validate and survives a round
// trip through SensitivityTableToJson unchanged.
#include <cstdint>
#include <string>
#include <vector>

#include "core/sensitivity_table.h"
#include "fuzz/fuzz_util.h"

namespace {

bool Equal(const moend::SensitivityTable& a, const moend::SensitivityTable& b) {
  return a.model == b.model && a.num_layers == b.num_layers && a.num_kv_heads == b.num_kv_heads &&
         a.head_dim == b.head_dim && a.seq_len == b.seq_len &&
         a.compression_point == b.compression_point && a.samples == b.samples &&
         a.tuples == b.tuples && a.s == b.s;
}

std::vector<moend::fuzz::Seed> MakeSeeds() {
  return {
      {"shipped_2layers_8tuples.json", moend::fuzz::TrimmedShippedTableJson(2, 14)},
      {"shipped_1layer_1tuple.json", moend::fuzz::TrimmedShippedTableJson(1, 1000)},
  };
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  moend::fuzz::MaybeWriteSeeds(*argc, *argv, MakeSeeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto table = moend::SensitivityTableFromJson(text);
  if (!table.ok()) {
    FUZZ_CHECK(!table.status().message().empty(), "an error without a message");
    return 0;
  }
  FUZZ_CHECK(table->Validate().ok(), "accepted a table that Validate rejects");
  const std::string json = moend::SensitivityTableToJson(*table);
  auto again = moend::SensitivityTableFromJson(json);
  FUZZ_CHECK(again.ok(), "its own JSON does not parse back: " + again.status().ToString());
  FUZZ_CHECK(Equal(*table, *again), "round trip through JSON changed the table");
  return 0;
}

// Helpers shared by the fuzz targets: files of the source tree, seed
// writing, and a check that crashes the fuzzer (an invariant of the code under
// test was broken, so libFuzzer must save the input).
#ifndef MOEND_FUZZ_FUZZ_UTIL_H_
#define MOEND_FUZZ_FUZZ_UTIL_H_

#include <string>
#include <utility>
#include <vector>

namespace moend::fuzz {

// A named seed input of a corpus.
using Seed = std::pair<std::string, std::string>;  // file name, bytes

// Prints `what` and traps: libFuzzer records the input as a crash.
[[noreturn]] void Fail(const char* file, int line, const std::string& what);

// The bytes of `relative_path` under the source tree (MOEND_SOURCE_DIR);
// aborts when the file cannot be read, since the fuzzer is then misbuilt.
std::string ReadSourceFile(const std::string& relative_path);

// The shipped sensitivity table cut down to its first `layers` layers and
// every `tuple_stride`-th tuple (the first one, (1,16,16), always kept), as
// JSON: a small valid table for seeds.
std::string TrimmedShippedTableJson(int layers, int tuple_stride);

// Called from LLVMFuzzerInitialize: when argv holds --write-seeds=DIR, writes
// `make()`'s seeds into DIR (created if missing) and exits; otherwise does
// nothing. This is how the committed corpus is regenerated (fuzz/README.md).
void MaybeWriteSeeds(int argc, char** argv, std::vector<Seed> (*make)());

}  // namespace moend::fuzz

// FUZZ_CHECK(cond, message): an invariant of the code under test.
#define FUZZ_CHECK(cond, what)                                   \
  do {                                                           \
    if (!(cond)) ::moend::fuzz::Fail(__FILE__, __LINE__, (what)); \
  } while (0)

#endif  // MOEND_FUZZ_FUZZ_UTIL_H_

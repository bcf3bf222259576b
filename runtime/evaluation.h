// The quality evaluation of DESIGN.md section 3 with real compression: prefill
// with full attention, compress every layer with the plan's tuple, decode from
// the compressed cache.
//   Retrieval: context = prompt up to and including its last newline, question
//   = the rest; prefill the context, compress at c = len(context), feed the
//   question, greedy-decode answer-length bytes; correct iff equal.
//   Bits per byte: windows of 4096 bytes of held-out text, compress after 3072,
//   bits per byte of the next 1024 bytes teacher-forced.
// Several plans share each prefill (it does not depend on the plan). This is
// the path the node serves: streaming prefill, then runtime::Step over the
// packed caches (docs/DESIGN.md section 5).
#ifndef MOEND_RUNTIME_EVALUATION_H_
#define MOEND_RUNTIME_EVALUATION_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/compression.h"
#include "kernels/cpu_attention.h"
#include "runtime/model.h"
#include "kernels/backend.h"

namespace moend::runtime {

struct RetrievalPrompt {
  std::string prompt;
  std::string answer;
};

// Rows of a retrieval JSONL file (fields "prompt" and "answer"; others ignored).
absl::StatusOr<std::vector<RetrievalPrompt>> ReadRetrievalFile(const std::string& path);

struct EvalOptions {
  int64_t retrieval_limit = 0;  // prompts evaluated; 0 = all
  int64_t bpb_windows = 8;      // held-out windows, evenly spaced over the file; 0 = none
  int64_t bpb_window = 4096;    // bytes per window
  int64_t bpb_context = 3072;   // compression point inside a window
  kernels::Backend backend = kernels::Backend::kAuto;  // compression kernels
  kernels::CpuIsa isa = kernels::CpuIsa::kBest;         // attention kernel
};

struct EvalResult {
  int64_t retrieval_correct = 0;
  int64_t retrieval_total = 0;
  double bpb = 0;              // bits per byte over every scored held-out byte
  int64_t bpb_bytes = 0;       // bytes scored
  double ratio = 0;            // mean achieved compression ratio over the retrieval prompts
  double bpb_ratio = 0;        // mean achieved ratio at the held-out windows' compression point
};

// Progress: work items done out of total (prompts + windows).
using EvalProgress = std::function<void(int64_t done, int64_t total)>;

// One result per plan; plans[i] has one tuple per model layer, or one per
// layer and KV head (runtime/streaming_prefill.h).
absl::StatusOr<std::vector<EvalResult>> Evaluate(
    const Model& model, const std::vector<std::vector<CompressionTuple>>& plans,
    const std::vector<RetrievalPrompt>& retrieval, const std::string& heldout,
    const EvalOptions& options, const EvalProgress& progress = nullptr);

}  // namespace moend::runtime

#endif  // MOEND_RUNTIME_EVALUATION_H_

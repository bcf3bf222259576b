#include "runtime/evaluation.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"
#include "runtime/sampler.h"
#include "runtime/sequence.h"
#include "runtime/streaming_prefill.h"

namespace moend::runtime {
namespace {

std::vector<int32_t> Bytes(std::string_view s) {
  std::vector<int32_t> out;
  out.reserve(s.size());
  for (unsigned char c : s) out.push_back(c);
  return out;
}

// -log2 softmax(row)[target]
double Bits(const float* row, int64_t n, int32_t target) {
  const float mx = *std::max_element(row, row + n);
  double z = 0;
  for (int64_t i = 0; i < n; ++i) z += std::exp(static_cast<double>(row[i] - mx));
  return (std::log(z) - static_cast<double>(row[target] - mx)) / std::log(2.0);
}

}  // namespace

absl::StatusOr<std::vector<RetrievalPrompt>> ReadRetrievalFile(const std::string& path) {
  MOEND_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::vector<RetrievalPrompt> out;
  std::istringstream lines(text);
  std::string line;
  int64_t lineno = 0;
  while (std::getline(lines, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("prompt") || !j.contains("answer") ||
        !j["prompt"].is_string() || !j["answer"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", lineno, ": expected a JSON object with string fields prompt and answer"));
    }
    RetrievalPrompt p{j["prompt"].get<std::string>(), j["answer"].get<std::string>()};
    if (p.prompt.find('\n') == std::string::npos || p.answer.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", lineno, ": the prompt needs a newline (context/question split) and the "
                             "answer must not be empty"));
    }
    out.push_back(std::move(p));
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(path, " holds no prompts"));
  return out;
}

absl::StatusOr<std::vector<EvalResult>> Evaluate(
    const Model& model, const std::vector<std::vector<CompressionTuple>>& plans,
    const std::vector<RetrievalPrompt>& retrieval, const std::string& heldout,
    const EvalOptions& options, const EvalProgress& progress) {
  const int64_t vocab = model.config().vocab_size;
  if (plans.empty()) return absl::InvalidArgumentError("no plans to evaluate");
  if (options.bpb_windows > 0 &&
      (options.bpb_context < 1 || options.bpb_context >= options.bpb_window ||
       static_cast<int64_t>(heldout.size()) < options.bpb_window)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "held-out text of ", heldout.size(), " bytes cannot hold a window of ",
        options.bpb_window, " bytes compressed after ", options.bpb_context));
  }
  const int64_t prompts =
      options.retrieval_limit > 0
          ? std::min<int64_t>(options.retrieval_limit, static_cast<int64_t>(retrieval.size()))
          : static_cast<int64_t>(retrieval.size());
  const int64_t total = prompts + options.bpb_windows;
  int64_t done = 0;
  std::vector<EvalResult> results(plans.size());
  std::vector<double> bits(plans.size(), 0.0);

  for (int64_t i = 0; i < prompts; ++i) {
    const RetrievalPrompt& p = retrieval[static_cast<size_t>(i)];
    const size_t cut = p.prompt.rfind('\n') + 1;
    const std::vector<int32_t> context = Bytes(std::string_view(p.prompt).substr(0, cut));
    const std::vector<int32_t> question = Bytes(std::string_view(p.prompt).substr(cut));
    PrefillOptions popts;
    popts.appended_capacity = static_cast<int64_t>(question.size() + p.answer.size());
    popts.backend = options.backend;
    MOEND_ASSIGN_OR_RETURN(PrefillResult prefill, StreamingPrefill(model, context, plans, popts));
    for (size_t k = 0; k < plans.size(); ++k) {
      Sequence seq(std::move(prefill.caches[k]), static_cast<int64_t>(context.size()));
      results[k].ratio += static_cast<double>(seq.UncompressedBytes(model.config())) /
                          static_cast<double>(seq.CacheBytes());
      std::vector<float> last = prefill.last_logits;
      if (!question.empty()) {
        MOEND_ASSIGN_OR_RETURN(std::vector<float> q, Feed(model, seq, question, options.isa));
        last.assign(q.end() - vocab, q.end());
      }
      std::string answer;
      for (size_t b = 0; b < p.answer.size(); ++b) {
        const int32_t next = Argmax(last);
        answer.push_back(static_cast<char>(next));
        if (b + 1 == p.answer.size()) break;
        MOEND_ASSIGN_OR_RETURN(last, Feed(model, seq, std::vector<int32_t>{next}, options.isa));
      }
      results[k].retrieval_correct += answer == p.answer ? 1 : 0;
      results[k].retrieval_total += 1;
    }
    if (progress) progress(++done, total);
  }

  for (int64_t w = 0; w < options.bpb_windows; ++w) {
    // Evenly spaced windows over the file.
    const int64_t span = static_cast<int64_t>(heldout.size()) - options.bpb_window;
    const int64_t start = options.bpb_windows > 1 ? span * w / (options.bpb_windows - 1) : 0;
    const std::vector<int32_t> window =
        Bytes(std::string_view(heldout).substr(static_cast<size_t>(start),
                                               static_cast<size_t>(options.bpb_window)));
    const std::span<const int32_t> all(window);
    const std::span<const int32_t> rest = all.subspan(static_cast<size_t>(options.bpb_context));
    PrefillOptions popts;
    popts.appended_capacity = static_cast<int64_t>(rest.size());
    popts.backend = options.backend;
    MOEND_ASSIGN_OR_RETURN(
        PrefillResult prefill,
        StreamingPrefill(model, all.subspan(0, static_cast<size_t>(options.bpb_context)), plans,
                         popts));
    for (size_t k = 0; k < plans.size(); ++k) {
      Sequence seq(std::move(prefill.caches[k]), options.bpb_context);
      results[k].bpb_ratio += static_cast<double>(seq.UncompressedBytes(model.config())) /
                              static_cast<double>(seq.CacheBytes());
      // The prefill's last logits predict rest[0]; feeding rest[0..n-2] predicts the others.
      bits[k] += Bits(prefill.last_logits.data(), vocab, rest[0]);
      MOEND_ASSIGN_OR_RETURN(std::vector<float> logits,
                             Feed(model, seq, rest.subspan(0, rest.size() - 1), options.isa));
      for (size_t t = 1; t < rest.size(); ++t) {
        bits[k] += Bits(logits.data() + (t - 1) * static_cast<size_t>(vocab), vocab, rest[t]);
      }
      results[k].bpb_bytes += static_cast<int64_t>(rest.size());
    }
    if (progress) progress(++done, total);
  }
  for (size_t k = 0; k < plans.size(); ++k) {
    if (prompts > 0) results[k].ratio /= static_cast<double>(prompts);
    if (results[k].bpb_bytes > 0) {
      results[k].bpb = bits[k] / static_cast<double>(results[k].bpb_bytes);
      results[k].bpb_ratio /= static_cast<double>(options.bpb_windows);
    }
  }
  return results;
}

}  // namespace moend::runtime

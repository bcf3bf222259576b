#include "runtime/sequence.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/compression.h"
#include "core/status_macros.h"

namespace moend::runtime {

int64_t Sequence::MaxRun() const {
  if (layers_.empty()) return 1;
  const int64_t room = kQuantGroup - layers_[0].residual_tokens();
  return room == 1 ? 1 : room - 1;
}

int64_t Sequence::CacheBytes() const {
  int64_t total = 0;
  for (const kernels::CompressedLayer& l : layers_) total += l.Bytes();
  return total;
}

int64_t Sequence::CapacityBytes() const {
  int64_t total = 0;
  for (const kernels::CompressedLayer& l : layers_) total += l.CapacityBytes();
  return total;
}

int64_t Sequence::UncompressedBytes(const ModelConfig& c) const {
  return c.num_layers * c.num_kv_heads * position_ * c.head_dim * 4;
}

absl::Status Step(const Model& model, std::span<const StepInput> batch, std::vector<float>* logits,
                  kernels::CpuIsa isa) {
  const ModelConfig& c = model.config();
  const int64_t h = c.num_heads, hkv = c.num_kv_heads, d = c.head_dim, hidden = c.hidden_size;
  // Validate everything before any cache changes.
  int64_t rows = 0;
  for (size_t b = 0; b < batch.size(); ++b) {
    const StepInput& in = batch[b];
    if (in.sequence == nullptr || in.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("step input ", b, " has no sequence or tokens"));
    }
    for (size_t e = 0; e < b; ++e) {
      if (batch[e].sequence == in.sequence) {
        return absl::InvalidArgumentError(absl::StrCat(
            "step inputs ", e, " and ", b, " feed the same sequence; a sequence takes one run "
            "per step"));
      }
    }
    if (static_cast<int64_t>(in.sequence->layers().size()) != c.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("step input ", b, " has ",
                                                     in.sequence->layers().size(),
                                                     " layers; the model has ", c.num_layers));
    }
    const int64_t run = static_cast<int64_t>(in.tokens.size());
    if (run > in.sequence->MaxRun()) {
      return absl::InvalidArgumentError(absl::StrCat("step input ", b, " feeds ", run,
                                                     " tokens; its cache takes at most ",
                                                     in.sequence->MaxRun(), " now"));
    }
    for (int32_t t : in.tokens) {
      if (t < 0 || t >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token ", t, " is outside the vocabulary [0, ", c.vocab_size, ")"));
      }
    }
    rows += run;
  }
  logits->assign(static_cast<size_t>(rows * c.vocab_size), 0.0f);
  if (rows == 0) return absl::OkStatus();

  std::vector<int32_t> tokens;
  std::vector<int64_t> positions, first_row;
  tokens.reserve(static_cast<size_t>(rows));
  positions.reserve(static_cast<size_t>(rows));
  for (const StepInput& in : batch) {
    first_row.push_back(static_cast<int64_t>(tokens.size()));
    for (size_t i = 0; i < in.tokens.size(); ++i) {
      tokens.push_back(in.tokens[i]);
      positions.push_back(in.sequence->position() + static_cast<int64_t>(i));
    }
  }
  std::vector<float> x(static_cast<size_t>(rows * hidden)), q(static_cast<size_t>(h * rows * d)),
      k(static_cast<size_t>(hkv * rows * d)), v(static_cast<size_t>(hkv * rows * d)),
      qt(static_cast<size_t>(rows * h * d)), attn(static_cast<size_t>(rows * h * d));
  std::vector<kernels::HeadView> views(batch.size() * static_cast<size_t>(hkv));
  std::vector<kernels::AttentionItem> items(batch.size());
  const kernels::AttentionShape shape{h, hkv, d};
  model.Embed(tokens, x.data());
  for (int64_t l = 0; l < c.num_layers; ++l) {
    model.AttentionInputsAt(l, x.data(), rows, positions.data(), q.data(), k.data(), v.data());
    // q [H, rows, D] -> token-major [rows, H, D], the kernel's row layout.
    for (int64_t head = 0; head < h; ++head) {
      for (int64_t r = 0; r < rows; ++r) {
        std::copy_n(q.data() + (head * rows + r) * d, d, qt.data() + (r * h + head) * d);
      }
    }
    for (size_t b = 0; b < batch.size(); ++b) {
      kernels::CompressedLayer& layer = batch[b].sequence->layers()[static_cast<size_t>(l)];
      const int64_t r0 = first_row[b], run = static_cast<int64_t>(batch[b].tokens.size());
      const int64_t residual_before = layer.residual_tokens();
      MOEND_RETURN_IF_ERROR(layer.Append(k.data() + r0 * d, v.data() + r0 * d, run, rows));
      // A flush (only ever by a run of one) leaves the residual empty.
      const int64_t visible = layer.residual_tokens() == 0 ? 0 : residual_before + 1;
      for (int64_t kh = 0; kh < hkv; ++kh) views[b * hkv + kh] = layer.View(kh);
      items[b] = kernels::AttentionItem{views.data() + b * hkv, qt.data() + r0 * h * d,
                                        attn.data() + r0 * h * d, h * d, h * d, run, visible};
    }
    MOEND_RETURN_IF_ERROR(kernels::CpuAttention(items, shape, isa));
    model.FinishLayer(l, attn.data(), rows, x.data());
  }
  model.Logits(x.data(), rows, logits->data());
  for (const StepInput& in : batch) in.sequence->Advance(static_cast<int64_t>(in.tokens.size()));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> Feed(const Model& model, Sequence& sequence,
                                        std::span<const int32_t> tokens, kernels::CpuIsa isa) {
  const int64_t vocab = model.config().vocab_size;
  std::vector<float> all, part;
  all.reserve(tokens.size() * static_cast<size_t>(vocab));
  size_t done = 0;
  while (done < tokens.size()) {
    const size_t run =
        std::min(static_cast<size_t>(sequence.MaxRun()), tokens.size() - done);
    const StepInput in{&sequence, tokens.subspan(done, run)};
    MOEND_RETURN_IF_ERROR(Step(model, std::span<const StepInput>(&in, 1), &part, isa));
    all.insert(all.end(), part.begin(), part.end());
    done += run;
  }
  return all;
}

}  // namespace moend::runtime

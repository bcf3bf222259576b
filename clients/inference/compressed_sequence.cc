#include "clients/inference/compressed_sequence.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/partial_attention.h"
#include "core/fp16.h"
#include "core/status_macros.h"
#include "kernels/dequantize.h"

namespace moend::inference {

absl::StatusOr<PrefillCapture> Prefill(const Model& model, std::span<const int32_t> context,
                                       kernels::Backend backend) {
  const ModelConfig& c = model.config();
  PrefillCapture cap;
  cap.tokens = static_cast<int64_t>(context.size());
  cap.q.resize(static_cast<size_t>(c.num_layers));
  cap.k.resize(static_cast<size_t>(c.num_layers));
  cap.v.resize(static_cast<size_t>(c.num_layers));
  MOEND_ASSIGN_OR_RETURN(std::vector<float> logits,
                         model.Forward(context, [&](const LayerActivations& a) {
                           const size_t l = static_cast<size_t>(a.layer);
                           const int64_t n = a.tokens, d = c.head_dim;
                           cap.q[l].assign(a.q, a.q + c.num_heads * n * d);
                           cap.k[l].assign(a.k, a.k + c.num_kv_heads * n * d);
                           cap.v[l].assign(a.v, a.v + c.num_kv_heads * n * d);
                         }));
  cap.last_logits.assign(logits.end() - c.vocab_size, logits.end());
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const size_t li = static_cast<size_t>(l);
    kernels::LayerTensors x{cap.q[li].data(), cap.k[li].data(), cap.v[li].data(), c.num_heads,
                            c.num_kv_heads, cap.tokens, c.head_dim};
    MOEND_ASSIGN_OR_RETURN(kernels::EvictionScores scores,
                           kernels::ComputeEvictionScores(x, cap.tokens, backend));
    cap.scores.push_back(std::move(scores));
  }
  return cap;
}

absl::StatusOr<std::unique_ptr<CompressedSequence>> CompressedSequence::Create(
    const Model& model, const PrefillCapture& prefill, std::span<const CompressionTuple> tuples,
    kernels::Backend backend) {
  const ModelConfig& c = model.config();
  if (static_cast<int64_t>(tuples.size()) != c.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("plan has ", tuples.size(),
                                                   " layers but the model has ", c.num_layers));
  }
  if (static_cast<int64_t>(prefill.k.size()) != c.num_layers ||
      static_cast<int64_t>(prefill.scores.size()) != c.num_layers || prefill.tokens < 1) {
    return absl::InvalidArgumentError("prefill capture does not match the model");
  }
  auto seq = std::unique_ptr<CompressedSequence>(new CompressedSequence(model));
  seq->position_ = prefill.tokens;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const size_t li = static_cast<size_t>(l);
    kernels::LayerTensors x{prefill.q[li].data(), prefill.k[li].data(), prefill.v[li].data(),
                            c.num_heads, c.num_kv_heads, prefill.tokens, c.head_dim};
    // CompressLayer's steps, with the plan-independent scores reused.
    absl::StatusOr<kernels::CompressedLayer> layer = [&]() -> absl::StatusOr<kernels::CompressedLayer> {
      MOEND_RETURN_IF_ERROR(ValidateTuple(tuples[li]));
      MOEND_ASSIGN_OR_RETURN(
          kernels::KeptSet kept,
          kernels::SelectKept(prefill.scores[li], KeptTokens(tuples[li].keep, prefill.tokens),
                              backend));
      return kernels::QuantizeKept(x, kept, tuples[li].kbits, tuples[li].vbits, backend);
    }();
    if (!layer.ok()) {
      return absl::Status(layer.status().code(),
                          absl::StrCat("layer ", l, ": ", layer.status().message()));
    }
    seq->layers_.push_back(*std::move(layer));
  }
  seq->dense_k_.resize(static_cast<size_t>(c.num_layers));
  seq->dense_v_.resize(static_cast<size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) seq->Redensify(l);
  return seq;
}

void CompressedSequence::Redensify(int64_t layer) {
  const size_t l = static_cast<size_t>(layer);
  const int64_t heads = model_.config().num_kv_heads;
  dense_k_[l].resize(static_cast<size_t>(heads));
  dense_v_[l].resize(static_cast<size_t>(heads));
  for (int64_t h = 0; h < heads; ++h) {
    kernels::DequantizeHead(layers_[l], h, &dense_k_[l][static_cast<size_t>(h)],
                            &dense_v_[l][static_cast<size_t>(h)]);
  }
}

absl::StatusOr<std::vector<float>> CompressedSequence::Feed(std::span<const int32_t> tokens) {
  const ModelConfig& c = model_.config();
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token ", tokens[i], " is outside [0, ",
                                                     c.vocab_size, ")"));
    }
  }
  const int64_t h = c.num_heads, hkv = c.num_kv_heads, d = c.head_dim, hidden = c.hidden_size;
  const int64_t group = h / hkv;
  std::vector<float> logits(tokens.size() * static_cast<size_t>(c.vocab_size));
  size_t done = 0;
  while (done < tokens.size()) {
    // Decoding appends a token before it attends, so the token that fills the
    // residual's group of 32 attends to that group already quantized. Chunks
    // therefore stop just before it, and it goes on its own.
    const int64_t room = kQuantGroup - layers_[0].residual_tokens();
    const bool fills_group = room == 1;
    const int64_t n =
        fills_group ? 1 : std::min<int64_t>(room - 1, static_cast<int64_t>(tokens.size() - done));
    std::vector<float> x(static_cast<size_t>(n * hidden)), q(static_cast<size_t>(h * n * d)),
        k(static_cast<size_t>(hkv * n * d)), v(static_cast<size_t>(hkv * n * d)),
        attn(static_cast<size_t>(n * h * d));
    model_.Embed(tokens.subspan(done, static_cast<size_t>(n)), x.data());
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const size_t li = static_cast<size_t>(l);
      model_.AttentionInputs(l, x.data(), n, position_, q.data(), k.data(), v.data());
      // The new tokens enter the cache as fp16: attend to them as stored.
      for (float& f : k) f = RoundToHalf(f);
      for (float& f : v) f = RoundToHalf(f);
      if (fills_group) {
        // The residual's 31 fp16 rows plus this token become one quantized
        // group: swap the last 31 dense rows for the group's dequantized rows.
        const int64_t first = layers_[li].head(0).quantized;
        MOEND_RETURN_IF_ERROR(layers_[li].Append(k.data(), v.data(), n));
        for (int64_t kh = 0; kh < hkv; ++kh) {
          auto& dk = dense_k_[li][static_cast<size_t>(kh)];
          auto& dv = dense_v_[li][static_cast<size_t>(kh)];
          const size_t keep = dk.size() - static_cast<size_t>((kQuantGroup - 1) * d);
          dk.resize(keep + static_cast<size_t>(kQuantGroup * d));
          dv.resize(keep + static_cast<size_t>(kQuantGroup * d));
          kernels::DequantizeQuantizedRows(layers_[li], kh, first, kQuantGroup, dk.data() + keep,
                                           dv.data() + keep);
        }
      }
#pragma omp parallel for schedule(static)
      for (int64_t hq = 0; hq < h; ++hq) {
        const size_t kv = static_cast<size_t>(hq / group);
        const std::vector<float>& ck = dense_k_[li][kv];
        const std::vector<float>& cv = dense_v_[li][kv];
        std::vector<float> scores;
        SoftmaxPartial cached, fresh;
        AttendPartial(q.data() + hq * n * d, n, ck.data(), cv.data(),
                      static_cast<int64_t>(ck.size()) / d, d, /*causal_offset=*/-1, scores,
                      cached);
        // The chunk's own tokens, causally (none when they are already cached).
        AttendPartial(q.data() + hq * n * d, n, k.data() + kv * n * d, v.data() + kv * n * d,
                      fills_group ? 0 : n, d, /*causal_offset=*/0, scores, fresh);
        MergePartials(cached, fresh, n, d, attn.data() + hq * d, h * d);
      }
      if (!fills_group) {
        MOEND_RETURN_IF_ERROR(layers_[li].Append(k.data(), v.data(), n));
        for (int64_t kh = 0; kh < hkv; ++kh) {
          auto& dk = dense_k_[li][static_cast<size_t>(kh)];
          auto& dv = dense_v_[li][static_cast<size_t>(kh)];
          dk.insert(dk.end(), k.begin() + kh * n * d, k.begin() + (kh + 1) * n * d);
          dv.insert(dv.end(), v.begin() + kh * n * d, v.begin() + (kh + 1) * n * d);
        }
      }
      model_.FinishLayer(l, attn.data(), n, x.data());
    }
    model_.Logits(x.data(), n, logits.data() + done * static_cast<size_t>(c.vocab_size));
    position_ += n;
    done += static_cast<size_t>(n);
  }
  return logits;
}

int64_t CompressedSequence::CacheBytes() const {
  int64_t total = 0;
  for (const kernels::CompressedLayer& l : layers_) total += l.Bytes();
  return total;
}

int64_t CompressedSequence::UncompressedBytes() const {
  const ModelConfig& c = model_.config();
  return c.num_layers * c.num_kv_heads * position_ * c.head_dim * 4;
}

}  // namespace moend::inference

// Validation and backend dispatch of the attention entry points.
#include "kernels/attention.h"

#include "absl/strings/str_cat.h"
#include "core/compression.h"
#include "core/status_macros.h"
#include "kernels/reference/reference.h"
#ifdef MOEND_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace moend::kernels {
namespace {

absl::Status ValidateLayer(const CompressedLayer& c, const LayerFormat& f, int64_t index) {
  if (!(c.format() == f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cache ", index, " has format (kv heads ", c.format().num_kv_heads, ", D ",
        c.format().head_dim, ", bits ", BitsString(c.format()), ") but cache 0 has (kv heads ",
        f.num_kv_heads, ", D ", f.head_dim, ", bits ", BitsString(f),
        "); a batch shares one layer format"));
  }
  const int64_t d = f.head_dim;
  const int64_t w = c.window_tokens(), r = c.residual_tokens();
  for (int64_t h = 0; h < f.num_kv_heads; ++h) {
    const CompressedHead& hd = c.head(h);
    const int64_t q = hd.quantized;
    const int64_t groups = hd.KeyGroups();
    const int kbits = f.KBits(h), vbits = f.VBits(h);
    const bool ok =
        q >= hd.initial_kept && hd.initial_kept >= 0 && (q - hd.initial_kept) % kQuantGroup == 0 &&
        static_cast<int64_t>(hd.k_codes.size()) == q * PackedRowBytes(d, kbits) &&
        static_cast<int64_t>(hd.v_codes.size()) == q * PackedRowBytes(d, vbits) &&
        static_cast<int64_t>(hd.k_scale.size()) == (kbits < kFp16Bits ? groups * d : 0) &&
        hd.k_min.size() == hd.k_scale.size() &&
        static_cast<int64_t>(hd.v_scale.size()) == (vbits < kFp16Bits ? q * (d / kQuantGroup) : 0) &&
        hd.v_min.size() == hd.v_scale.size() &&
        static_cast<int64_t>(hd.window_k.size()) == w * d && hd.window_v.size() == hd.window_k.size() &&
        static_cast<int64_t>(hd.residual_k.size()) == r * d &&
        hd.residual_v.size() == hd.residual_k.size() && w <= kWindowTokens;
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache ", index, " head ", h, ": buffer sizes do not match its format (",
                       hd.quantized, " quantized tokens at bits ", kbits, "/", vbits, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status DecodeAttention(absl::Span<const CompressedLayer* const> caches, const float* q,
                             int64_t num_heads, float* out, Backend backend) {
  if (caches.empty()) return absl::OkStatus();
  if (q == nullptr || out == nullptr) return absl::InvalidArgumentError("q or out is null");
  for (size_t i = 0; i < caches.size(); ++i) {
    if (caches[i] == nullptr) return absl::InvalidArgumentError(absl::StrCat("cache ", i, " is null"));
  }
  const LayerFormat& f = caches[0]->format();
  MOEND_RETURN_IF_ERROR(ValidateFormat(f));
  if (num_heads <= 0 || num_heads % f.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_heads ", num_heads,
                                                   " is not a positive multiple of num_kv_heads ",
                                                   f.num_kv_heads));
  }
  for (size_t i = 0; i < caches.size(); ++i) {
    MOEND_RETURN_IF_ERROR(ValidateLayer(*caches[i], f, static_cast<int64_t>(i)));
  }
  MOEND_ASSIGN_OR_RETURN(Backend b, ResolveBackend(backend));
#ifdef MOEND_WITH_CUDA
  if (b == Backend::kCuda) return cuda::DecodeAttention(caches, q, num_heads, out);
#endif
  (void)b;
  ref::DecodeAttention(caches, q, num_heads, out);
  return absl::OkStatus();
}

absl::Status ProbeAttention(const CompressedLayer& prefix, const ProbeQueries& p, float* out,
                            Backend backend) {
  const LayerFormat& f = prefix.format();
  MOEND_RETURN_IF_ERROR(ValidateFormat(f));
  MOEND_RETURN_IF_ERROR(ValidateLayer(prefix, f, 0));
  if (p.q == nullptr || out == nullptr) return absl::InvalidArgumentError("q or out is null");
  if (p.num_heads <= 0 || p.num_heads % f.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_heads ", p.num_heads,
                                                   " is not a positive multiple of num_kv_heads ",
                                                   f.num_kv_heads));
  }
  if (p.num_queries < 0 || p.query_offset < 0 || p.tail_tokens < 0 ||
      p.query_offset + p.num_queries > p.tail_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "queries [", p.query_offset, ", ", p.query_offset + p.num_queries,
        ") must lie inside the tail of ", p.tail_tokens, " tokens"));
  }
  if ((p.q_head_stride != 0 && p.q_head_stride < p.num_queries) ||
      (p.tail_head_stride != 0 && p.tail_head_stride < p.tail_tokens)) {
    return absl::InvalidArgumentError("a head stride is smaller than the rows it must hold");
  }
  if (p.tail_tokens > 0 && (p.k_tail == nullptr || p.v_tail == nullptr)) {
    return absl::InvalidArgumentError("k_tail or v_tail is null");
  }
  if (p.num_queries == 0) return absl::OkStatus();
  MOEND_ASSIGN_OR_RETURN(Backend b, ResolveBackend(backend));
#ifdef MOEND_WITH_CUDA
  if (b == Backend::kCuda) return cuda::ProbeAttention(prefix, p, out);
#endif
  (void)b;
  ref::ProbeAttention(prefix, p, out);
  return absl::OkStatus();
}

}  // namespace moend::kernels

#include "kernels/compressed_cache.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/compression.h"
#include "kernels/fp16.h"
#include "kernels/reference/quantize_ref.h"

namespace moend::kernels {

LayerFormat LayerFormat::PerHead(int64_t dim, const std::vector<int>& kbits,
                                 const std::vector<int>& vbits) {
  LayerFormat f(static_cast<int64_t>(kbits.size()), dim, kbits.empty() ? 16 : kbits[0],
                vbits.empty() ? 16 : vbits[0]);
  if (std::any_of(kbits.begin(), kbits.end(), [&](int b) { return b != f.kbits; })) {
    f.head_kbits = kbits;
  }
  if (std::any_of(vbits.begin(), vbits.end(), [&](int b) { return b != f.vbits; }) ||
      vbits.size() != kbits.size()) {
    f.head_vbits = vbits;
  }
  return f;
}

bool LayerFormat::Uniform() const {
  for (int64_t h = 1; h < num_kv_heads; ++h) {
    if (KBits(h) != KBits(0) || VBits(h) != VBits(0)) return false;
  }
  return true;
}

bool operator==(const LayerFormat& a, const LayerFormat& b) {
  if (a.num_kv_heads != b.num_kv_heads || a.head_dim != b.head_dim) return false;
  const auto sized = [](const LayerFormat& f) {
    return (f.head_kbits.empty() || static_cast<int64_t>(f.head_kbits.size()) == f.num_kv_heads) &&
           (f.head_vbits.empty() || static_cast<int64_t>(f.head_vbits.size()) == f.num_kv_heads);
  };
  if (!sized(a) || !sized(b)) {  // malformed: compare field by field
    return a.kbits == b.kbits && a.vbits == b.vbits && a.head_kbits == b.head_kbits &&
           a.head_vbits == b.head_vbits;
  }
  if (a.num_kv_heads == 0) return a.kbits == b.kbits && a.vbits == b.vbits;
  for (int64_t h = 0; h < a.num_kv_heads; ++h) {
    if (a.KBits(h) != b.KBits(h) || a.VBits(h) != b.VBits(h)) return false;
  }
  return true;
}

std::string BitsString(const LayerFormat& f) {
  const bool sized =
      (f.head_kbits.empty() || static_cast<int64_t>(f.head_kbits.size()) == f.num_kv_heads) &&
      (f.head_vbits.empty() || static_cast<int64_t>(f.head_vbits.size()) == f.num_kv_heads);
  if (!sized || f.num_kv_heads <= 0 || f.Uniform()) {
    return absl::StrCat(f.num_kv_heads > 0 && sized ? f.KBits(0) : f.kbits, "/",
                        f.num_kv_heads > 0 && sized ? f.VBits(0) : f.vbits);
  }
  std::string s = "[";
  for (int64_t h = 0; h < f.num_kv_heads; ++h) {
    absl::StrAppend(&s, h ? " " : "", f.KBits(h), "/", f.VBits(h));
  }
  return s + "]";
}

absl::Status ValidateFormat(const LayerFormat& f) {
  if (f.num_kv_heads <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_kv_heads ", f.num_kv_heads, " must be positive"));
  }
  if (f.head_dim != 64 && f.head_dim != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("head dim ", f.head_dim, " is not supported (allowed: 64, 128)"));
  }
  for (const auto& [name, bits] : {std::pair<const char*, const std::vector<int>*>{"K", &f.head_kbits},
                                   {"V", &f.head_vbits}}) {
    if (!bits->empty() && static_cast<int64_t>(bits->size()) != f.num_kv_heads) {
      return absl::InvalidArgumentError(
          absl::StrCat("per-head ", name, " bits hold ", bits->size(), " entries for ",
                       f.num_kv_heads, " KV heads (allowed: none, or one per KV head)"));
    }
  }
  for (int64_t h = 0; h < f.num_kv_heads; ++h) {
    const std::string head = f.Uniform() ? "" : absl::StrCat(" of KV head ", h);
    if (!IsSupportedBits(f.KBits(h))) {
      return absl::InvalidArgumentError(
          absl::StrCat("K bits ", f.KBits(h), head, " is not one of 2, 4, 8, 16"));
    }
    if (!IsSupportedBits(f.VBits(h))) {
      return absl::InvalidArgumentError(
          absl::StrCat("V bits ", f.VBits(h), head, " is not one of 2, 4, 8, 16"));
    }
  }
  return absl::OkStatus();
}

int64_t PackedRowBytes(int64_t head_dim, int bits) { return head_dim * bits / 8; }

int64_t CompressedHead::KeyGroups() const {
  return (initial_kept + kQuantGroup - 1) / kQuantGroup + (quantized - initial_kept) / kQuantGroup;
}

int64_t CompressedHead::KeyGroupBegin(int64_t g) const {
  const int64_t initial_groups = (initial_kept + kQuantGroup - 1) / kQuantGroup;
  return g < initial_groups ? g * kQuantGroup : initial_kept + (g - initial_groups) * kQuantGroup;
}

int64_t CompressedHead::KeyGroupSize(int64_t g) const {
  const int64_t begin = KeyGroupBegin(g);
  const int64_t initial_groups = (initial_kept + kQuantGroup - 1) / kQuantGroup;
  return g < initial_groups ? std::min<int64_t>(kQuantGroup, initial_kept - begin) : kQuantGroup;
}

CompressedLayer::CompressedLayer(const LayerFormat& format, int64_t prefix_tokens)
    : format_(format), prefix_tokens_(prefix_tokens), heads_(format.num_kv_heads) {}

int64_t CompressedLayer::window_tokens() const {
  return heads_.empty() ? 0 : static_cast<int64_t>(heads_[0].window_k.size()) / format_.head_dim;
}

int64_t CompressedLayer::residual_tokens() const {
  return heads_.empty() ? 0 : static_cast<int64_t>(heads_[0].residual_k.size()) / format_.head_dim;
}

int64_t CompressedLayer::AttendedTokens(int64_t h) const {
  return heads_[h].quantized + window_tokens() + residual_tokens();
}

HeadView CompressedLayer::View(int64_t h) const {
  const CompressedHead& hd = heads_[h];
  HeadView v;
  v.k_codes = hd.k_codes.data();
  v.k_scale = hd.k_scale.data();
  v.k_min = hd.k_min.data();
  v.v_codes = hd.v_codes.data();
  v.v_scale = hd.v_scale.data();
  v.v_min = hd.v_min.data();
  v.window_k = hd.window_k.data();
  v.window_v = hd.window_v.data();
  v.residual_k = hd.residual_k.data();
  v.residual_v = hd.residual_v.data();
  v.initial_kept = hd.initial_kept;
  v.quantized = hd.quantized;
  v.window = window_tokens();
  v.residual = residual_tokens();
  v.kbits = format_.KBits(h);
  v.vbits = format_.VBits(h);
  return v;
}

int64_t CompressedLayer::Bytes() const {
  int64_t bytes = 0;
  for (const CompressedHead& h : heads_) {
    bytes += static_cast<int64_t>(h.k_codes.size() + h.v_codes.size());
    bytes += 2 * static_cast<int64_t>(h.k_scale.size() + h.k_min.size() + h.v_scale.size() +
                                      h.v_min.size() + h.window_k.size() + h.window_v.size() +
                                      h.residual_k.size() + h.residual_v.size());
  }
  return bytes;
}

namespace {

// Element counts of one head's buffers once reserved for `appended` tokens.
struct HeadCapacity {
  int64_t quantized, key_groups, residual;
};

HeadCapacity CapacityFor(int64_t initial_kept, int64_t appended) {
  const int64_t flushes = appended / kQuantGroup;
  return {initial_kept + flushes * kQuantGroup,
          (initial_kept + kQuantGroup - 1) / kQuantGroup + flushes,
          std::min<int64_t>(appended, kQuantGroup)};
}

}  // namespace

int64_t ReservedLayerBytes(const LayerFormat& f, std::span<const int64_t> initial_kept,
                           int64_t window, int64_t appended) {
  const int64_t d = f.head_dim;
  int64_t bytes = 0;
  for (int64_t h = 0; h < f.num_kv_heads; ++h) {
    const int kbits = f.KBits(h), vbits = f.VBits(h);
    const HeadCapacity c =
        CapacityFor(initial_kept.size() == 1 ? initial_kept[0] : initial_kept[h], appended);
    int64_t head = c.quantized * (PackedRowBytes(d, kbits) + PackedRowBytes(d, vbits));
    if (kbits < kFp16Bits) head += 2 * c.key_groups * d * 2;
    if (vbits < kFp16Bits) head += 2 * c.quantized * (d / kQuantGroup) * 2;
    head += 2 * (window + c.residual) * d * 2;
    head += c.quantized * static_cast<int64_t>(sizeof(int32_t));
    bytes += head;
  }
  return bytes;
}

int64_t ReservedLayerBytes(const LayerFormat& f, int64_t initial_kept, int64_t window,
                           int64_t appended) {
  return ReservedLayerBytes(f, std::span<const int64_t>(&initial_kept, 1), window, appended);
}

void CompressedLayer::Reserve(int64_t appended) {
  const int64_t d = format_.head_dim;
  for (int64_t h = 0; h < static_cast<int64_t>(heads_.size()); ++h) {
    CompressedHead& hd = heads_[h];
    const int kbits = format_.KBits(h), vbits = format_.VBits(h);
    const HeadCapacity c = CapacityFor(hd.initial_kept, appended_ + appended);
    hd.k_codes.reserve(c.quantized * PackedRowBytes(d, kbits));
    hd.v_codes.reserve(c.quantized * PackedRowBytes(d, vbits));
    if (kbits < kFp16Bits) {
      hd.k_scale.reserve(c.key_groups * d);
      hd.k_min.reserve(c.key_groups * d);
    }
    if (vbits < kFp16Bits) {
      hd.v_scale.reserve(c.quantized * (d / kQuantGroup));
      hd.v_min.reserve(c.quantized * (d / kQuantGroup));
    }
    hd.residual_k.reserve(c.residual * d);
    hd.residual_v.reserve(c.residual * d);
    hd.position.reserve(c.quantized);
  }
}

int64_t CompressedLayer::CapacityBytes() const {
  int64_t bytes = 0;
  for (const CompressedHead& h : heads_) {
    bytes += static_cast<int64_t>(h.k_codes.capacity() + h.v_codes.capacity());
    bytes += 2 * static_cast<int64_t>(h.k_scale.capacity() + h.k_min.capacity() +
                                      h.v_scale.capacity() + h.v_min.capacity() +
                                      h.window_k.capacity() + h.window_v.capacity() +
                                      h.residual_k.capacity() + h.residual_v.capacity());
    bytes += 4 * static_cast<int64_t>(h.position.capacity());
  }
  return bytes;
}

absl::Status CompressedLayer::Append(const float* k, const float* v, int64_t tokens,
                                     int64_t head_stride) {
  if (heads_.empty()) return absl::FailedPreconditionError("Append on an empty CompressedLayer");
  if (tokens < 0) return absl::InvalidArgumentError("Append: negative token count");
  if (tokens == 0) return absl::OkStatus();
  if (k == nullptr || v == nullptr) return absl::InvalidArgumentError("Append: null k or v");
  if (head_stride == 0) head_stride = tokens;
  if (head_stride < tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("Append: head stride ", head_stride, " < tokens ", tokens));
  }
  const int64_t d = format_.head_dim;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < format_.num_kv_heads; ++h) {
      const float* kr = k + (h * head_stride + t) * d;
      const float* vr = v + (h * head_stride + t) * d;
      CompressedHead& hd = heads_[h];
      for (int64_t i = 0; i < d; ++i) hd.residual_k.push_back(FloatToHalf(kr[i]));
      for (int64_t i = 0; i < d; ++i) hd.residual_v.push_back(FloatToHalf(vr[i]));
    }
    ++appended_;
    if (residual_tokens() == kQuantGroup) FlushResidual();
  }
  return absl::OkStatus();
}

QuantizedGroup QuantizeResidual(const uint16_t* residual_k, const uint16_t* residual_v, int64_t n,
                                int64_t head_dim, int kbits, int vbits) {
  const int64_t d = head_dim, vgroups = d / kQuantGroup;
  const int64_t krow = PackedRowBytes(d, kbits), vrow = PackedRowBytes(d, vbits);
  std::vector<float> kf(n * d), vf(n * d);
  for (int64_t i = 0; i < n * d; ++i) {
    kf[i] = HalfToFloat(residual_k[i]);
    vf[i] = HalfToFloat(residual_v[i]);
  }
  std::vector<const float*> rows(n);
  for (int64_t i = 0; i < n; ++i) rows[i] = kf.data() + i * d;
  QuantizedGroup g;
  g.k_codes.assign(n * krow, 0);
  g.v_codes.assign(n * vrow, 0);
  if (kbits < kFp16Bits) {
    g.k_scale.resize(d);
    g.k_min.resize(d);
  }
  if (vbits < kFp16Bits) {
    g.v_scale.resize(n * vgroups);
    g.v_min.resize(n * vgroups);
  }
  ref::QuantizeKeyGroup(rows.data(), n, d, kbits, g.k_codes.data(),
                        kbits < kFp16Bits ? g.k_scale.data() : nullptr,
                        kbits < kFp16Bits ? g.k_min.data() : nullptr);
  for (int64_t i = 0; i < n; ++i) {
    ref::QuantizeValueRow(vf.data() + i * d, d, vbits, g.v_codes.data() + i * vrow,
                          vbits < kFp16Bits ? g.v_scale.data() + i * vgroups : nullptr,
                          vbits < kFp16Bits ? g.v_min.data() + i * vgroups : nullptr);
  }
  return g;
}

void CompressedLayer::FlushResidual() {
  const int64_t n = residual_tokens();
  for (int64_t h = 0; h < static_cast<int64_t>(heads_.size()); ++h) {
    CompressedHead& hd = heads_[h];
    const QuantizedGroup g = QuantizeResidual(hd.residual_k.data(), hd.residual_v.data(), n,
                                              format_.head_dim, format_.KBits(h), format_.VBits(h));
    // Appends within the capacity Reserve set: nothing moves.
    auto append = [](auto& to, const auto& from) { to.insert(to.end(), from.begin(), from.end()); };
    append(hd.k_codes, g.k_codes);
    append(hd.v_codes, g.v_codes);
    append(hd.k_scale, g.k_scale);
    append(hd.k_min, g.k_min);
    append(hd.v_scale, g.v_scale);
    append(hd.v_min, g.v_min);
    for (int64_t i = 0; i < n; ++i) {
      hd.position.push_back(static_cast<int32_t>(prefix_tokens_ + appended_ - n + i));
    }
    hd.quantized += n;
    hd.residual_k.clear();
    hd.residual_v.clear();
  }
}

}  // namespace moend::kernels

#include "kernels/cuda/decode_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/compression.h"
#include "kernels/cuda/launch.h"

namespace moend::kernels::cuda {
namespace {

int64_t CeilDiv32(int64_t n) { return (n + kQuantGroup - 1) / kQuantGroup; }

int64_t InitialKept(const DecodeSequenceShape& s, int64_t h) {
  return s.initial_kept.size() == 1 ? s.initial_kept[0] : s.initial_kept[h];
}

}  // namespace

int SplitsFor(int items, int num_heads, int num_kv_heads, int max_units, const SplitPolicy& policy) {
  const int group = num_heads / num_kv_heads;
  const int64_t base = static_cast<int64_t>(items) * num_kv_heads *
                       ((group + kAttentionMaxGroup - 1) / kAttentionMaxGroup);
  const int64_t sms = std::max(1, policy.sm_count);
  const int64_t want =
      policy.waves > 0
          ? std::max<int64_t>(1, int64_t{policy.waves} * policy.min_blocks_per_sm * sms / base)
          : (8 * sms + base - 1) / base;
  const int64_t cap = std::max(1, max_units / kAttentionWarps);
  return static_cast<int>(std::max<int64_t>(1, std::min(want, cap)));
}

int AttentionUnits(const HeadCacheView& h, int tail_len) {
  const int nb0 = (h.initial_kept + 31) / 32;
  return nb0 + (h.n_quant - h.initial_kept) / 32 + (h.n_window + 31) / 32 + (h.n_residual + 31) / 32 +
         (tail_len + 31) / 32;
}

int64_t AttentionWorkspaceFloats(int items, int num_heads, int head_dim, int splits) {
  return static_cast<int64_t>(items) * num_heads * splits * (head_dim + 2);
}

int64_t DecodeHeadUnits(int64_t initial_kept, int64_t window, int64_t appended) {
  return CeilDiv32(initial_kept) + appended / kQuantGroup + CeilDiv32(window) +
         CeilDiv32(appended % kQuantGroup);
}

absl::StatusOr<DecodeSchedule> ScheduleDecode(const DecodeBatchShape& shape, const SplitPolicy& policy) {
  const int64_t items = static_cast<int64_t>(shape.sequences.size());
  if (items == 0 || items > kAttentionMaxItems) {
    return absl::InvalidArgumentError(
        absl::StrCat("decode batch of ", items, " sequences (allowed: 1 to ", kAttentionMaxItems, ")"));
  }
  if (shape.tail_units < 0) {
    return absl::InvalidArgumentError(absl::StrCat("tail units ", shape.tail_units, " is negative"));
  }
  DecodeSchedule s;
  s.items = items;
  s.num_heads = shape.num_heads;
  s.num_kv_heads = shape.sequences[0].format.num_kv_heads;
  s.head_dim = shape.sequences[0].format.head_dim;
  for (int64_t i = 0; i < items; ++i) {
    const DecodeSequenceShape& seq = shape.sequences[i];
    if (absl::Status st = ValidateFormat(seq.format); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": ", st.message()));
    }
    if (seq.format.num_kv_heads != s.num_kv_heads || seq.format.head_dim != s.head_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", i, " has ", seq.format.num_kv_heads, " KV heads of dim ", seq.format.head_dim,
          ", sequence 0 has ", s.num_kv_heads, " of dim ", s.head_dim, " (a batch shares both)"));
    }
    if (seq.initial_kept.size() != 1 && static_cast<int64_t>(seq.initial_kept.size()) != s.num_kv_heads) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, " gives ", seq.initial_kept.size(),
                                                     " kept counts for ", s.num_kv_heads,
                                                     " KV heads (allowed: one, or one per KV head)"));
    }
    if (seq.window < 0 || seq.appended < 0 ||
        std::any_of(seq.initial_kept.begin(), seq.initial_kept.end(), [](int64_t m) { return m < 0; })) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, " has a negative token count"));
    }
    s.formats.push_back(seq.format);
  }
  if (s.num_heads <= 0 || s.num_heads % s.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_heads ", s.num_heads, " is not a positive multiple of ",
                                                   s.num_kv_heads, " KV heads"));
  }
  const int64_t group = s.num_heads / s.num_kv_heads;
  // Maximal runs of items with one format, then runs of heads with equal bits.
  for (int64_t i0 = 0; i0 < items;) {
    int64_t i1 = i0 + 1;
    while (i1 < items && s.formats[i1] == s.formats[i0]) ++i1;
    const LayerFormat& f = s.formats[i0];
    for (int64_t k0 = 0; k0 < s.num_kv_heads;) {
      int64_t k1 = k0 + 1;
      while (k1 < s.num_kv_heads && f.KBits(k1) == f.KBits(k0) && f.VBits(k1) == f.VBits(k0)) ++k1;
      DecodeLaunch l;
      l.item_begin = i0;
      l.item_end = i1;
      l.kv_begin = k0;
      l.kv_end = k1;
      l.kbits = f.KBits(k0);
      l.vbits = f.VBits(k0);
      int64_t units = 1;
      for (int64_t i = i0; i < i1; ++i) {
        const DecodeSequenceShape& seq = shape.sequences[i];
        for (int64_t h = k0; h < k1; ++h) {
          units = std::max(units, DecodeHeadUnits(InitialKept(seq, h), seq.window, seq.appended) +
                                      shape.tail_units);
        }
      }
      if (units > (int64_t{1} << 30)) {
        return absl::InvalidArgumentError(absl::StrCat("a head of ", units, " units of 32 tokens is too long"));
      }
      l.max_units = static_cast<int>(units);
      const int run_items = static_cast<int>(i1 - i0), run_kv = static_cast<int>(k1 - k0);
      const int run_heads = static_cast<int>(run_kv * group);
      l.splits = SplitsFor(run_items, run_heads, run_kv, l.max_units, policy);
      l.table_offset = s.table_entries;
      s.table_entries += (i1 - i0) * (k1 - k0);
      s.workspace_floats = std::max(
          s.workspace_floats, AttentionWorkspaceFloats(run_items, run_heads, static_cast<int>(s.head_dim), l.splits));
      s.launches.push_back(l);
      k0 = k1;
    }
    i0 = i1;
  }
  return s;
}

}  // namespace moend::kernels::cuda

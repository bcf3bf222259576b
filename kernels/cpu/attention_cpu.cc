// CpuAttention: validation, instruction-set dispatch and the OpenMP loop over
// (item, KV head). The per-head work is in attention_portable.cc and
// attention_avx2.cc (one algorithm, attention_core.h).
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention_cpu_internal.h"
#include "kernels/cpu_attention.h"

#if defined(MOEND_CPU_X86_64)
#include <cpuid.h>
#endif

namespace moend::kernels {
namespace cpu {

Scratch& ThreadScratch(int64_t qn, int64_t d) {
  struct Buffers {
    Scratch scratch;
    std::vector<float> q, o, m, l;
    std::vector<int64_t> visible;
  };
  static thread_local Buffers b;
  if (static_cast<int64_t>(b.q.size()) < qn * d) {
    b.q.resize(qn * d);
    b.o.resize(qn * d);
  }
  if (static_cast<int64_t>(b.m.size()) < qn) {
    b.m.resize(qn);
    b.l.resize(qn);
    b.visible.resize(qn);
  }
  b.scratch.q = b.q.data();
  b.scratch.o = b.o.data();
  b.scratch.m = b.m.data();
  b.scratch.l = b.l.data();
  b.scratch.visible = b.visible.data();
  return b.scratch;
}

}  // namespace cpu

namespace {

#if defined(MOEND_CPU_X86_64)
// F16C is CPUID leaf 1, ECX bit 29 (clang 14's __builtin_cpu_supports does
// not know "f16c").
bool CpuHasF16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1u << 29)) != 0;
}
#endif

bool CpuHas(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kPortable:
      return true;
    case CpuIsa::kAvx2:
#if defined(MOEND_CPU_X86_64)
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && CpuHasF16c();
#else
      return false;  // no AVX2 path built for this architecture
#endif
    case CpuIsa::kAvx512:
    case CpuIsa::kBest:
      return false;
  }
  return false;
}

bool IsBits(int bits) { return bits == 2 || bits == 4 || bits == 8 || bits == 16; }

absl::Status ValidateHead(const HeadView& h, int64_t item, int64_t head) {
  const std::string where = absl::StrCat("item ", item, " KV head ", head, ": ");
  if (!IsBits(h.kbits) || !IsBits(h.vbits)) {
    return absl::InvalidArgumentError(absl::StrCat(where, "bits K ", h.kbits, " V ", h.vbits,
                                                   " (allowed: 2, 4, 8, 16)"));
  }
  if (h.initial_kept < 0 || h.quantized < h.initial_kept || h.window < 0 || h.residual < 0 ||
      (h.quantized - h.initial_kept) % 32 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, "lengths initial_kept ", h.initial_kept, " quantized ", h.quantized, " window ",
        h.window, " residual ", h.residual,
        " (need 0 <= initial_kept <= quantized, quantized - initial_kept a multiple of 32)"));
  }
  if (h.quantized > 0) {
    if (h.k_codes == nullptr || h.v_codes == nullptr ||
        (h.kbits < 16 && (h.k_scale == nullptr || h.k_min == nullptr)) ||
        (h.vbits < 16 && (h.v_scale == nullptr || h.v_min == nullptr))) {
      return absl::InvalidArgumentError(absl::StrCat(where, "null quantized-part pointer"));
    }
  }
  if (h.window > 0 && (h.window_k == nullptr || h.window_v == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(where, "null window pointer"));
  }
  if (h.residual > 0 && (h.residual_k == nullptr || h.residual_v == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(where, "null residual pointer"));
  }
  return absl::OkStatus();
}

absl::Status Validate(absl::Span<const AttentionItem> items, const AttentionShape& s) {
  if (s.head_dim != 64 && s.head_dim != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("head dim ", s.head_dim, " is not supported (allowed: 64, 128)"));
  }
  if (s.num_heads <= 0 || s.num_kv_heads <= 0 || s.num_heads % s.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_heads ", s.num_heads, " must be a positive multiple of num_kv_heads ",
                     s.num_kv_heads));
  }
  const int64_t row = s.num_heads * s.head_dim;
  for (size_t b = 0; b < items.size(); ++b) {
    const AttentionItem& it = items[b];
    if (it.heads == nullptr || it.q == nullptr || it.out == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("item ", b, ": null heads, q or out"));
    }
    if (it.rows < 0 || it.residual_visible < 0) {
      return absl::InvalidArgumentError(absl::StrCat("item ", b, ": rows ", it.rows,
                                                     " residual_visible ", it.residual_visible,
                                                     " (both must be >= 0)"));
    }
    if ((it.q_row_stride != 0 && it.q_row_stride < row) ||
        (it.out_row_stride != 0 && it.out_row_stride < row)) {
      return absl::InvalidArgumentError(
          absl::StrCat("item ", b, ": row strides q ", it.q_row_stride, " out ",
                       it.out_row_stride, " below num_heads * head_dim ", row, " (0: packed)"));
    }
    for (int64_t h = 0; h < s.num_kv_heads; ++h) {
      absl::Status st = ValidateHead(it.heads[h], static_cast<int64_t>(b), h);
      if (!st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace

CpuIsa BestCpuIsa() {
  static const CpuIsa best = CpuHas(CpuIsa::kAvx2) ? CpuIsa::kAvx2 : CpuIsa::kPortable;
  return best;
}

std::string CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kBest:
      return "best";
    case CpuIsa::kPortable:
      return "portable";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

absl::Status CheckCpuIsa(CpuIsa isa) {
  if (isa == CpuIsa::kBest || CpuHas(isa)) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("CPU attention: instruction set ", CpuIsaName(isa),
                   isa == CpuIsa::kAvx512 ? " has no kernel in this build"
                                          : " is not supported by this CPU",
                   " (best here: ", CpuIsaName(BestCpuIsa()), ")"));
}

absl::Status CpuAttention(absl::Span<const AttentionItem> items, const AttentionShape& shape,
                          CpuIsa isa) {
  if (absl::Status st = CheckCpuIsa(isa); !st.ok()) return st;
  if (isa == CpuIsa::kBest) isa = BestCpuIsa();
  absl::Status st = Validate(items, shape);
  if (!st.ok()) return st;
  cpu::AttendHeadFn fn = cpu::AttendHeadPortable;
#if defined(MOEND_CPU_X86_64)
  if (isa == CpuIsa::kAvx2) fn = cpu::AttendHeadAvx2;
#endif
  // Strides resolved once (0: packed rows of num_heads * head_dim).
  const int64_t row = shape.num_heads * shape.head_dim;
  std::vector<AttentionItem> resolved(items.begin(), items.end());
  for (AttentionItem& it : resolved) {
    if (it.q_row_stride == 0) it.q_row_stride = row;
    if (it.out_row_stride == 0) it.out_row_stride = row;
  }
  const int64_t work = static_cast<int64_t>(resolved.size()) * shape.num_kv_heads;
#pragma omp parallel for schedule(dynamic)
  for (int64_t wi = 0; wi < work; ++wi) {
    const int64_t b = wi / shape.num_kv_heads, h = wi % shape.num_kv_heads;
    if (resolved[b].rows > 0) fn(resolved[b], shape, h);
  }
  return absl::OkStatus();
}

}  // namespace moend::kernels

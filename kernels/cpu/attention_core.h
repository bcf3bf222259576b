// Internal to kernels/cpu: the CPU attention algorithm, written once over a
// policy P of vector primitives and compiled in each ISA's translation unit
// (attention_portable.cc, attention_avx2.cc) with that unit's flags.
// Everything here has internal linkage (anonymous namespace), so no inline
// function compiled with AVX2 flags can be picked by the linker for the
// portable path. Include it only from those .cc files, after <cmath>. It
// instantiates no standard library template (ThreadScratch grows the buffers
// in attention_cpu.cc, compiled with the baseline flags).
//
// Per (item, KV head): the R rows x G query heads that read the KV head form
// QN = R * G queries, each with an fp32 online softmax (m, l, o[D]). The cache
// is walked in units of at most 32 tokens (one K group of the quantized part,
// 32 window rows, 32 residual rows). A unit's codes are unpacked to float once
// (as codes, unscaled) and shared by all QN queries:
//   K quantized: logit = (q * inv_sqrt_d * k_scale) . codes + (q * inv_sqrt_d) . k_min
//   V quantized: o[d] += sum_t p_t * v_scale[t, d/32] * code[t, d]
//                        + sum_t p_t * v_min[t, d/32]
// fp16 rows are converted to float and used as they are.
#ifndef MOEND_KERNELS_CPU_ATTENTION_CORE_H_
#define MOEND_KERNELS_CPU_ATTENTION_CORE_H_

#include "kernels/cache_view.h"
#include "kernels/cpu/attention_cpu_internal.h"
#include "kernels/cpu_attention.h"

namespace moend::kernels::cpu {
namespace {

inline int64_t ClampI(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : x > hi ? hi : x; }

// cache_view.h's ViewKeyGroups / ViewKeyGroupBegin / ViewKeyGroupSize, with
// internal linkage: an unoptimised build emits the header's inline functions
// (and std::exp, std::sqrt) as weak symbols, and the linker may keep the copy
// compiled with -mavx2 for every caller. Hence also __builtin_expf/sqrtf.
inline int64_t KeyGroups(const HeadView& h) {
  return (h.initial_kept + kUnit - 1) / kUnit + (h.quantized - h.initial_kept) / kUnit;
}
inline int64_t KeyGroupBegin(const HeadView& h, int64_t g) {
  const int64_t initial_groups = (h.initial_kept + kUnit - 1) / kUnit;
  return g < initial_groups ? g * kUnit : h.initial_kept + (g - initial_groups) * kUnit;
}
inline int64_t KeyGroupSize(const HeadView& h, int64_t g) {
  const int64_t initial_groups = (h.initial_kept + kUnit - 1) / kUnit;
  return g >= initial_groups ? kUnit : ClampI(h.initial_kept - g * kUnit, 0, kUnit);
}

struct UnitKind {
  int64_t n = 0;          // tokens in the unit (<= 32)
  bool kquant = false;    // kf holds codes, ks/km the group's scale/min
  bool vquant = false;    // vf holds codes, vs/vm the per-token scale/min
  int64_t resid_t0 = -1;  // >= 0: residual rows [resid_t0, resid_t0 + n), masked per query
};

// Tokens of the unit that query i sees.
inline int64_t VisibleInUnit(const Scratch& s, const UnitKind& u, int64_t i) {
  return u.resid_t0 < 0 ? u.n : ClampI(s.visible[i] - u.resid_t0, 0, u.n);
}

// Feeds one unit (in s.kf, s.vf, ...) to every query's online softmax. Two
// queries that see the same tokens (GQA heads of one row) go together, so
// each K and V row loaded serves both.
template <class P>
void ProcessUnit(Scratch& s, int64_t qn, int64_t d, const UnitKind& u) {
  const int64_t chunks = d / kChunk;
  for (int64_t i = 0; i < qn;) {
    const int64_t nv = VisibleInUnit(s, u, i);
    const int64_t pair = i + 1 < qn && VisibleInUnit(s, u, i + 1) == nv ? 2 : 1;
    if (nv == 0) {
      i += pair;
      continue;
    }
    const float* qk[2];
    float c[2] = {0.0f, 0.0f};
    for (int64_t k = 0; k < pair; ++k) {
      const float* qi = s.q + (i + k) * d;
      qk[k] = qi;
      if (u.kquant) {
        P::Mul(qi, s.ks, s.qs[k], d);
        c[k] = P::Dot(qi, s.km, d);
        qk[k] = s.qs[k];
      }
    }
    if (pair == 2) {
      P::Logits2(qk[0], qk[1], s.kf, nv, d, c[0], c[1], s.logit[0], s.logit[1]);
    } else {
      P::Logits(qk[0], s.kf, nv, d, c[0], s.logit[0]);
    }
    const float* w[2];
    for (int64_t k = 0; k < pair; ++k) {
      const int64_t qi = i + k;
      const float* logit = s.logit[k];
      float* p = s.p[k];
      float mx = s.m[qi];
      for (int64_t t = 0; t < nv; ++t) mx = logit[t] > mx ? logit[t] : mx;
      const float corr = __builtin_expf(s.m[qi] - mx);
      const float psum = P::ExpSum(logit, nv, mx, p);
      if (corr != 1.0f) P::Scale(corr, s.o + qi * d, d);
      s.l[qi] = s.l[qi] * corr + psum;
      s.m[qi] = mx;
      for (int64_t t = nv; t < kUnit; ++t) p[t] = 0.0f;
      w[k] = p;
      if (u.vquant) {
        // Token t, chunk j: weight p_t * scale; sum_t p_t * min is added once.
        for (int64_t j = 0; j < chunks; ++j) {
          P::Mul(p, s.vs + j * kUnit, s.w[k] + j * kUnit, kUnit);
          P::AddConst(P::Dot(p, s.vm + j * kUnit, kUnit), s.o + qi * d + j * kChunk, kChunk);
        }
        w[k] = s.w[k];
      }
    }
    const int64_t ws = u.vquant ? kUnit : 0;
    if (pair == 2) {
      P::AccumV2(w[0], w[1], ws, s.vf, nv, d, s.o + i * d, s.o + (i + 1) * d);
    } else {
      P::AccumV(w[0], ws, s.vf, nv, d, s.o + i * d);
    }
    i += pair;
  }
}

// Fills s.kf / s.vf with n fp16 rows [n, D] and feeds them.
template <class P>
void Fp16Unit(Scratch& s, const uint16_t* k, const uint16_t* v, int64_t qn, int64_t d,
              const UnitKind& u) {
  P::Half(k, u.n * d, s.kf);
  P::Half(v, u.n * d, s.vf);
  ProcessUnit<P>(s, qn, d, u);
}

template <class P>
void AttendHead(const AttentionItem& item, const AttentionShape& shape, int64_t kv_head) {
  const HeadView& hv = item.heads[kv_head];
  const int64_t d = shape.head_dim, group = shape.num_heads / shape.num_kv_heads;
  const int64_t rows = item.rows, qn = rows * group, chunks = d / kChunk;
  Scratch& s = ThreadScratch(qn, d);
  const float inv_sqrt_d = 1.0f / __builtin_sqrtf(static_cast<float>(d));
  int64_t max_visible = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < group; ++g) {
      const int64_t i = r * group + g;
      const float* q = item.q + r * item.q_row_stride + (kv_head * group + g) * d;
      for (int64_t e = 0; e < d; ++e) s.q[i * d + e] = q[e] * inv_sqrt_d;
      for (int64_t e = 0; e < d; ++e) s.o[i * d + e] = 0.0f;
      s.m[i] = -INFINITY;
      s.l[i] = 0.0f;
      s.visible[i] = ClampI(item.residual_visible + r, 0, hv.residual);
      max_visible = s.visible[i] > max_visible ? s.visible[i] : max_visible;
    }
  }

  // Quantized part, one K group per unit.
  const int64_t krow = d * hv.kbits / 8, vrow = d * hv.vbits / 8;
  const int64_t groups = KeyGroups(hv);
  for (int64_t grp = 0; grp < groups; ++grp) {
    UnitKind u;
    const int64_t t0 = KeyGroupBegin(hv, grp);
    u.n = KeyGroupSize(hv, grp);
    u.kquant = hv.kbits < 16;
    u.vquant = hv.vbits < 16;
    if (u.kquant) {
      P::Half(hv.k_scale + grp * d, d, s.ks);
      P::Half(hv.k_min + grp * d, d, s.km);
      for (int64_t t = 0; t < u.n; ++t) {
        P::Unpack(hv.k_codes + (t0 + t) * krow, hv.kbits, d, s.kf + t * d);
      }
    } else {
      P::Half(hv.k_codes + t0 * krow, u.n * d, s.kf);
    }
    if (u.vquant) {
      for (int64_t t = 0; t < u.n; ++t) {
        P::Unpack(hv.v_codes + (t0 + t) * vrow, hv.vbits, d, s.vf + t * d);
      }
      // [n, D/32] -> [D/32, 32], zero past n.
      P::HalfScalar(hv.v_scale + t0 * chunks, u.n * chunks, s.w[0]);
      for (int64_t j = 0; j < chunks; ++j) {
        for (int64_t t = 0; t < kUnit; ++t) {
          s.vs[j * kUnit + t] = t < u.n ? s.w[0][t * chunks + j] : 0.0f;
        }
      }
      P::HalfScalar(hv.v_min + t0 * chunks, u.n * chunks, s.w[0]);
      for (int64_t j = 0; j < chunks; ++j) {
        for (int64_t t = 0; t < kUnit; ++t) {
          s.vm[j * kUnit + t] = t < u.n ? s.w[0][t * chunks + j] : 0.0f;
        }
      }
    } else {
      P::Half(hv.v_codes + t0 * vrow, u.n * d, s.vf);
    }
    ProcessUnit<P>(s, qn, d, u);
  }
  // Window, then the residual rows (masked per query).
  for (int64_t t0 = 0; t0 < hv.window; t0 += kUnit) {
    UnitKind u;
    u.n = ClampI(hv.window - t0, 0, kUnit);
    Fp16Unit<P>(s, hv.window_k + t0 * d, hv.window_v + t0 * d, qn, d, u);
  }
  for (int64_t t0 = 0; t0 < max_visible; t0 += kUnit) {
    UnitKind u;
    u.n = ClampI(max_visible - t0, 0, kUnit);
    u.resid_t0 = t0;
    Fp16Unit<P>(s, hv.residual_k + t0 * d, hv.residual_v + t0 * d, qn, d, u);
  }

  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < group; ++g) {
      const int64_t i = r * group + g;
      float* out = item.out + r * item.out_row_stride + (kv_head * group + g) * d;
      const float inv_l = s.l[i] > 0.0f ? 1.0f / s.l[i] : 0.0f;
      for (int64_t e = 0; e < d; ++e) out[e] = s.o[i * d + e] * inv_l;
    }
  }
}

}  // namespace
}  // namespace moend::kernels::cpu

#endif  // MOEND_KERNELS_CPU_ATTENTION_CORE_H_

// Integer side of the attention kernel's code unpacking: which channels pair
// up in the mma fragments, and how a pair of packed codes becomes an fp16
// "magic" pair. Plain C++ (host and device), so that the CPU test suite checks
// the exact functions the kernel calls (tests/kernels/unpack_bits_test.cc).
//
// A magic pair holds two codes c_lo, c_hi, one in each 16-bit half, inside the
// fp16 mantissa: the half 0x6400 | (c << p) is 1024 + c * 2^p, exactly. One
// fp16 FMA with the constants of CodeScale(p) and CodeOffset(p) turns it into
// c exactly ((1024 + c 2^p) * 2^-p - 2^(10-p)); p = 0 is the plain
// subtraction of 1024.
//
// Two ways to reach a code that sits at bit `pos` of its half:
//  - MOEND_ATTENTION_UNPACK=0: shift it down to bit 0 (one shift and one
//    mask-or per pair);
//  - MOEND_ATTENTION_UNPACK=1: leave it where it is when pos + bits <= 10 (it
//    is already inside the mantissa: the mask-or alone), otherwise after one
//    shift that the pairs of a word share (10 for 2 bits, 8 for 4 bits).
//    For 2-bit codes that is 1 shift + 8 mask-ors per word instead of 7 + 8,
//    for 4-bit 1 + 4 instead of 3 + 4: the integer pipe, which runs at half the
//    rate of the fp32/fp16 one, is what the packed path issues most.
// Both give bit-identical codes, hence bit-identical attention.
#ifndef MOEND_KERNELS_CUDA_UNPACK_BITS_H_
#define MOEND_KERNELS_CUDA_UNPACK_BITS_H_

#include <cstdint>

#ifdef __CUDACC__
#define MOEND_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MOEND_HOST_DEVICE inline
#endif

#ifndef MOEND_ATTENTION_UNPACK
#define MOEND_ATTENTION_UNPACK 0
#endif

namespace moend::kernels::cuda::unpack {

// The kernel's choice; the functions below take it as a template argument
// (defaulted to it) so that one test checks both.
constexpr bool kShiftLight = MOEND_ATTENTION_UNPACK != 0;

// K side: thread t of the quad owns Cpt = D/4 consecutive channels. Pair j
// (0 <= j < D/8) of them feeds logical k 2t..2t+1 (j even) or 2t+8..2t+9 (j
// odd) of k-tile j/2; (Lo(j), Hi(j)) are its two channels, relative to the
// thread's first one, chosen so that one mask (and at most one shift) of a
// packed word yields the pair: codes 8 apart at 2 bits (the two halves of a
// word), 4 apart at 4 bits, 2 apart at 8 bits, adjacent at 16.
template <int KB>
struct PairCh {
  static constexpr int Lo(int j) {
    return KB == 2 ? 16 * (j / 8) + j % 8 : KB == 4 ? 8 * (j / 4) + j % 4 : KB == 8 ? 4 * (j / 2) + j % 2 : 2 * j;
  }
  static constexpr int Hi(int j) { return KB == 2 ? Lo(j) + 8 : KB == 4 ? Lo(j) + 4 : KB == 8 ? Lo(j) + 2 : Lo(j) + 1; }
};

// Where a pair of BITS-bit codes at bit `pos` of each half is read from:
// shift the word right by `shift`, then the codes are at bit `p` of each half.
struct Slot {
  int shift;
  int p;
};
template <bool kLight = kShiftLight>
constexpr Slot CodeSlot(int bits, int pos) {
  if (!kLight) return {pos, 0};
  if (pos + bits <= 10) return {0, pos};
  const int shift = bits == 2 ? 10 : 8;  // 2 bits: 10,12,14 -> 0,2,4; 4 bits: 8,12 -> 0,4
  return {shift, pos - shift};
}

// fp16 pair constants of the FMA that maps a magic pair at bit p to its codes.
constexpr uint32_t HalfPairBits(uint32_t h) { return h | (h << 16); }
constexpr uint32_t CodeScale(int p) { return HalfPairBits(static_cast<uint32_t>(15 - p) << 10); }              // 2^-p
constexpr uint32_t CodeOffset(int p) { return HalfPairBits(0x8000u | (static_cast<uint32_t>(25 - p) << 10)); }  // -2^(10-p)

// The magic pair of the BITS-bit codes at bit POS of each half of w.
template <int BITS, int POS, bool kLight = kShiftLight>
MOEND_HOST_DEVICE uint32_t MagicAt(uint32_t w) {
  constexpr Slot s = CodeSlot<kLight>(BITS, POS);
  static_assert(s.p >= 0 && s.p + BITS <= 10, "code outside the fp16 mantissa");
  constexpr uint32_t mask = HalfPairBits(((1u << BITS) - 1u) << s.p);
  return ((w >> s.shift) & mask) | 0x64006400u;
}

// __byte_perm on the device, the same selection on the host.
MOEND_HOST_DEVICE uint32_t BytePerm(uint32_t x, uint32_t y, uint32_t sel) {
#ifdef __CUDA_ARCH__
  return __byte_perm(x, y, sel);
#else
  const uint64_t v = (static_cast<uint64_t>(y) << 32) | x;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<uint32_t>((v >> (8 * ((sel >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
  return r;
#endif
}

// Where packed codes sit, for 2 and 4 bits (8-bit pairs are one byte
// permute): a 16-bit half holds n = 16/bits codes.
// K: pair J of a thread's packed row (words w: its Cpt channels, code of
// channel c at bit bits*c, little endian) is code J % n of both halves of
// word J / n: channels (Lo(J), Hi(J)) of PairCh.
constexpr int KWord(int bits, int j) { return j / (16 / bits); }
constexpr int KPos(int bits, int j) { return bits * (j % (16 / bits)); }

// K: magic pair J of a thread's packed row; KB in {2, 4, 8}. Its bit
// position is KPairP<KB, J>().
template <int KB, int J, bool kLight = kShiftLight>
MOEND_HOST_DEVICE uint32_t KMagic(const uint32_t* w) {
  if constexpr (KB == 8) {
    return BytePerm(w[J / 2], 0x64646464u, (J % 2) ? 0x4341u : 0x4240u);
  } else {
    return MagicAt<KB, KPos(KB, J), kLight>(w[KWord(KB, J)]);
  }
}
template <int KB, int J, bool kLight = kShiftLight>
constexpr int KPairP() {
  return KB == 8 ? 0 : CodeSlot<kLight>(KB, KPos(KB, J)).p;
}

// V: thread g owns Dpt = D/8 consecutive channels; wa, wb are the packed
// words of those channels for two tokens a, b. Channel C is code C % n of
// the low (C % 2n < n) or high half of word C / 2n; the pair (token a,
// token b) is that half of both words side by side.
constexpr int VWord(int bits, int c) { return c / (32 / bits); }
constexpr bool VLow(int bits, int c) { return c % (32 / bits) < 16 / bits; }
constexpr int VPos(int bits, int c) { return bits * (c % (16 / bits)); }

// V: magic pair of channel C for (token a, token b); VB in {2, 4, 8}. Its
// bit position is VPairP<VB, C>().
template <int VB, int C, bool kLight = kShiftLight>
MOEND_HOST_DEVICE uint32_t VMagic(const uint32_t* wa, const uint32_t* wb) {
  if constexpr (VB == 8) {
    return (BytePerm(wa[C / 4], wb[C / 4], (C % 4) | ((4 + C % 4) << 8)) & 0x00ff00ffu) | 0x64006400u;
  } else {
    constexpr int k = VWord(VB, C);
    return MagicAt<VB, VPos(VB, C), kLight>(BytePerm(wa[k], wb[k], VLow(VB, C) ? 0x5410u : 0x7632u));
  }
}
template <int VB, int C, bool kLight = kShiftLight>
constexpr int VPairP() {
  return VB == 8 ? 0 : CodeSlot<kLight>(VB, VPos(VB, C)).p;
}

}  // namespace moend::kernels::cuda::unpack

#endif  // MOEND_KERNELS_CUDA_UNPACK_BITS_H_

// The attention kernel's code unpacking (kernels/cuda/unpack_bits.h), on the
// host: the functions the kernel calls, both ways (MOEND_ATTENTION_UNPACK 0
// and 1), against a plain decode of packed rows. Each magic pair, mapped by
// one fp16 FMA with CodeScale/CodeOffset of its position (evaluated exactly in
// double here; every value involved is exact in fp16 and the device FMA rounds
// once), must give the codes of the channels the mma fragment expects.
#include "kernels/cuda/unpack_bits.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "core/fp16.h"

namespace moend::kernels::cuda::unpack {
namespace {

// Packs codes (one per channel, BITS bits, little endian) into 32-bit words.
std::vector<uint32_t> Pack(const std::vector<int>& codes, int bits) {
  std::vector<uint32_t> w((codes.size() * bits + 31) / 32, 0u);
  for (size_t c = 0; c < codes.size(); ++c) {
    w[c * bits / 32] |= static_cast<uint32_t>(codes[c]) << (c * bits % 32);
  }
  return w;
}

// The codes a magic pair at bit p holds, through the FMA's constants.
std::pair<double, double> Decode(uint32_t magic, int p) {
  const double scale = HalfToFloat(static_cast<uint16_t>(CodeScale(p) & 0xffffu));
  const double offset = HalfToFloat(static_cast<uint16_t>(CodeOffset(p) & 0xffffu));
  EXPECT_EQ(CodeScale(p) >> 16, CodeScale(p) & 0xffffu);
  EXPECT_EQ(CodeOffset(p) >> 16, CodeOffset(p) & 0xffffu);
  const double lo = HalfToFloat(static_cast<uint16_t>(magic & 0xffffu));
  const double hi = HalfToFloat(static_cast<uint16_t>(magic >> 16));
  return {lo * scale + offset, hi * scale + offset};
}

// Rows of `channels` codes: random ones, then every code value in every channel.
std::vector<std::vector<int>> Rows(int channels, int bits, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
  std::vector<std::vector<int>> rows;
  for (int r = 0; r < 64; ++r) {
    std::vector<int> row(channels);
    for (int& c : row) c = code(rng);
    rows.push_back(std::move(row));
  }
  for (int v = 0; v < (1 << bits); ++v) {
    rows.emplace_back(channels, v);
    std::vector<int> stripes(channels);  // neighbours differ: a wrong mask or shift shows
    for (int c = 0; c < channels; ++c) stripes[c] = (v + c) % (1 << bits);
    rows.push_back(std::move(stripes));
  }
  return rows;
}

// Pair J of a quad thread's K row: channels (Lo(J), Hi(J)).
template <int KB, bool kLight, int J>
void CheckKPair(const uint32_t* w, const std::vector<int>& row) {
  const auto [lo, hi] = Decode(KMagic<KB, J, kLight>(w), KPairP<KB, J, kLight>());
  EXPECT_EQ(lo, row[PairCh<KB>::Lo(J)]) << "KB " << KB << " pair " << J << " light " << kLight;
  EXPECT_EQ(hi, row[PairCh<KB>::Hi(J)]) << "KB " << KB << " pair " << J << " light " << kLight;
}
template <int KB, bool kLight, int... J>
void CheckKRow(const uint32_t* w, const std::vector<int>& row, std::integer_sequence<int, J...>) {
  (CheckKPair<KB, kLight, J>(w, row), ...);
}
template <int KB, bool kLight>
void CheckK() {
  constexpr int kCpt = 128 / 4;  // D 128: a quad thread's channels, D/8 pairs
  for (const std::vector<int>& row : Rows(kCpt, KB, 11 + KB)) {
    const std::vector<uint32_t> w = Pack(row, KB);
    CheckKRow<KB, kLight>(w.data(), row, std::make_integer_sequence<int, kCpt / 2>{});
  }
}

// Channel C of two tokens' V rows: (token a, token b).
template <int VB, bool kLight, int C>
void CheckVChannel(const uint32_t* wa, const uint32_t* wb, const std::vector<int>& a, const std::vector<int>& b) {
  const auto [lo, hi] = Decode(VMagic<VB, C, kLight>(wa, wb), VPairP<VB, C, kLight>());
  EXPECT_EQ(lo, a[C]) << "VB " << VB << " channel " << C << " light " << kLight;
  EXPECT_EQ(hi, b[C]) << "VB " << VB << " channel " << C << " light " << kLight;
}
template <int VB, bool kLight, int... C>
void CheckVRows(const uint32_t* wa, const uint32_t* wb, const std::vector<int>& a, const std::vector<int>& b,
                std::integer_sequence<int, C...>) {
  (CheckVChannel<VB, kLight, C>(wa, wb, a, b), ...);
}
template <int VB, bool kLight>
void CheckV() {
  constexpr int kDpt = 128 / 8;  // D 128: a thread's V channels
  const std::vector<std::vector<int>> rows = Rows(kDpt, VB, 23 + VB);
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::vector<int>& a = rows[i];
    const std::vector<int>& b = rows[(i * 7 + 3) % rows.size()];
    const std::vector<uint32_t> wa = Pack(a, VB), wb = Pack(b, VB);
    CheckVRows<VB, kLight>(wa.data(), wb.data(), a, b, std::make_integer_sequence<int, kDpt>{});
  }
}

TEST(UnpackBitsTest, KeyPairsDecodeToTheirChannelsBothWays) {
  CheckK<2, false>();
  CheckK<2, true>();
  CheckK<4, false>();
  CheckK<4, true>();
  CheckK<8, false>();
  CheckK<8, true>();
}

TEST(UnpackBitsTest, ValuePairsDecodeToTheirTokensBothWays) {
  CheckV<2, false>();
  CheckV<2, true>();
  CheckV<4, false>();
  CheckV<4, true>();
  CheckV<8, false>();
  CheckV<8, true>();
}

TEST(UnpackBitsTest, ShiftLightReadsLowCodesInPlace) {
  // The point of MOEND_ATTENTION_UNPACK=1: codes inside the mantissa are read
  // without a shift, and every other one after the single shared shift.
  for (int pos = 0; pos < 16; pos += 2) {
    const Slot s = CodeSlot<true>(2, pos);
    EXPECT_EQ(s.shift, pos <= 8 ? 0 : 10) << pos;
    EXPECT_EQ(s.shift + s.p, pos);
  }
  for (int pos = 0; pos < 16; pos += 4) {
    const Slot s = CodeSlot<true>(4, pos);
    EXPECT_EQ(s.shift, pos <= 4 ? 0 : 8) << pos;
    EXPECT_EQ(s.shift + s.p, pos);
  }
  EXPECT_EQ(CodeSlot<false>(2, 6).shift, 6);
  EXPECT_EQ(CodeSlot<false>(2, 6).p, 0);
}

TEST(UnpackBitsTest, FmaConstantsArePowersOfTwo) {
  for (int p = 0; p <= 8; ++p) {
    EXPECT_EQ(HalfToFloat(static_cast<uint16_t>(CodeScale(p))), std::ldexp(1.0f, -p)) << p;
    EXPECT_EQ(HalfToFloat(static_cast<uint16_t>(CodeOffset(p))), -std::ldexp(1.0f, 10 - p)) << p;
  }
}

TEST(UnpackBitsTest, HostBytePermMatchesThePtxSelection) {
  // prmt: byte i of the result is byte sel[4i..4i+3] & 7 of {y, x} (x = bytes 0-3).
  EXPECT_EQ(BytePerm(0x33221100u, 0x77665544u, 0x5410u), 0x55441100u);
  EXPECT_EQ(BytePerm(0x33221100u, 0x77665544u, 0x7632u), 0x77663322u);
  EXPECT_EQ(BytePerm(0x33221100u, 0x64646464u, 0x4341u), 0x64336411u);
}

}  // namespace
}  // namespace moend::kernels::cuda::unpack

// runtime/token_file.h: the token-id format round-trips, other files are bytes,
// and malformed files or out-of-vocabulary ids are errors that say where.
#include "runtime/token_file.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace moend {
namespace {

TEST(TokenFileTest, TokenIdFormatRoundTripsAndIsLittleEndian) {
  const std::vector<int32_t> ids = {0, 255, 256, 151643, 152063, 0x01020304};
  const std::string encoded = EncodeTokenFile(ids);
  ASSERT_EQ(encoded.size(), 8 + 4 * ids.size());
  EXPECT_EQ(encoded.substr(0, 8), std::string("\x93MOETOK\x01", 8));
  // 0x01020304 is the last id: bytes 04 03 02 01.
  EXPECT_EQ(encoded.substr(encoded.size() - 4), std::string("\x04\x03\x02\x01", 4));
  auto decoded = DecodeTokenFile(encoded, "ids.bin");
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, ids);
}

TEST(TokenFileTest, OtherFilesAreOneTokenPerByte) {
  auto decoded = DecodeTokenFile(std::string("a\xff\x00\x93MOETOK", 10), "text.bin");
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, (std::vector<int32_t>{'a', 255, 0, 0x93, 'M', 'O', 'E', 'T', 'O', 'K'}));
  // The header alone is an empty token-id file; 7 of its bytes are bytes.
  EXPECT_TRUE(DecodeTokenFile(std::string("\x93MOETOK\x01", 8), "f")->empty());
  EXPECT_EQ(DecodeTokenFile(std::string("\x93MOETOK", 7), "f")->size(), 7u);
}

TEST(TokenFileTest, MalformedTokenIdFilesAreDataLoss) {
  std::string truncated = EncodeTokenFile(std::vector<int32_t>{1, 2});
  truncated.pop_back();
  auto bad = DecodeTokenFile(truncated, "short.bin");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("short.bin"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("multiple of 4"), std::string::npos) << bad.status();
  std::string huge = EncodeTokenFile(std::vector<int32_t>{7});
  huge.back() = '\x80';  // id 0x80000007
  auto above = DecodeTokenFile(huge, "huge.bin");
  EXPECT_EQ(above.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(above.status().message().find("2147483655 at position 0"), std::string::npos) << above.status();
}

TEST(TokenFileTest, CheckTokenIdsNamesTheFirstIdOutsideTheVocabulary) {
  const std::vector<int32_t> ids = {5, 152063, 152064, -1};
  EXPECT_TRUE(CheckTokenIds(std::span(ids).first(2), 152064, "x").ok());
  absl::Status s = CheckTokenIds(ids, 152064, "data.bin, sequence 3");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("data.bin, sequence 3: token id 152064 at position 2 is outside the model's "
                             "vocabulary [0, 152064)"),
            std::string::npos)
      << s;
  EXPECT_FALSE(CheckTokenIds(std::span(ids).last(1), 10, "x").ok());
}

}  // namespace
}  // namespace moend

// A test suite over the shipped model and the first bytes of the held-out
// text, loaded once per suite.
#ifndef MOEND_TESTS_RUNTIME_TINYCODE_FIXTURE_H_
#define MOEND_TESTS_RUNTIME_TINYCODE_FIXTURE_H_

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "core/file_util.h"
#include "runtime/model.h"

namespace moend::runtime::testing {

class TinycodeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto m = Model::Load(std::string(MOEND_SOURCE_DIR) + "/models/tinycode");
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = m->release();
    auto bytes = ReadFile(std::string(MOEND_SOURCE_DIR) + "/data/heldout_code.bin");
    ASSERT_TRUE(bytes.ok());
    text_ = new std::vector<int32_t>();
    for (int i = 0; i < 4096; ++i) text_->push_back(static_cast<unsigned char>((*bytes)[i]));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete text_;
  }
  static std::vector<int32_t> Prompt(int64_t begin, int64_t size) {
    return std::vector<int32_t>(text_->begin() + begin, text_->begin() + begin + size);
  }
  static inline Model* model_ = nullptr;
  static inline std::vector<int32_t>* text_ = nullptr;
};

}  // namespace moend::runtime::testing

#endif  // MOEND_TESTS_RUNTIME_TINYCODE_FIXTURE_H_

// The router tests use the project's child-process helper.
#ifndef MOEND_TESTS_ROUTER_CHILD_PROCESS_H_
#define MOEND_TESTS_ROUTER_CHILD_PROCESS_H_

#include "tests/util/child_process.h"

namespace moend::router::testing {
using ::moend::testing::ChildProcess;
using ::moend::testing::HttpGet;
}  // namespace moend::router::testing

#endif  // MOEND_TESTS_ROUTER_CHILD_PROCESS_H_

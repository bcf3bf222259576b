// Bounded waits for tests: poll a condition until it holds or a deadline
// passes, so that a broken condition fails the test with a message instead of
// hanging it until ctest's TIMEOUT.
#ifndef MOEND_TESTS_UTIL_WAIT_H_
#define MOEND_TESTS_UTIL_WAIT_H_

#include "absl/functional/function_ref.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace moend::testing {

// True as soon as `done()` is true; false once `timeout` passed without it.
// `done` is evaluated at least once, and once more after the deadline.
inline bool WaitUntil(absl::FunctionRef<bool()> done, absl::Duration timeout,
                      absl::Duration poll = absl::Milliseconds(5)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() >= deadline) return done();
    absl::SleepFor(poll);
  }
  return true;
}

}  // namespace moend::testing

#endif  // MOEND_TESTS_UTIL_WAIT_H_

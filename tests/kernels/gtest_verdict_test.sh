#!/usr/bin/env bash
# bench/gtest_verdict.sh, which the device scripts use to call a GPU test run
# a pass: only a run that exited 0, ran tests and skipped none is PASS.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
source "$src/bench/gtest_verdict.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0 passed=0
check() {  # name log-content rc expected-line expected-status
  printf '%b' "$2" > "$tmp/log"
  local got status=0
  got=$(gtest_verdict "$1" "$tmp/log" "$3") || status=$?
  if [[ $got == "$4" && $status == "$5" ]]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL $1: got '$got' (status $status), want '$4' (status $5)"
  fi
}
check all '[  PASSED  ] 7 tests.\n' 0 'all: PASS (7 tests)' 0
check one '[  PASSED  ] 1 test.\n' 0 'one: PASS (1 tests)' 0
check skipped 'x.cc:40: Skipped\nno CUDA device: none\n[  SKIPPED ] T.A (0 ms)\n[  PASSED  ] 0 tests.\n[  SKIPPED ] 3 tests, listed below:\n' 0 \
  'skipped: NOT RUN (3 skipped: no CUDA device: none)' 1
check some 'x.cc:9: Skipped\nwhy not\n[  PASSED  ] 4 tests.\n[  SKIPPED ] 1 test, listed below:\n' 0 \
  'some: INCOMPLETE (4 passed, 1 skipped: why not)' 1
check failed '[  PASSED  ] 3 tests.\n[  FAILED  ] 1 test, listed below:\n[  FAILED  ] T.B\n' 1 \
  'failed: FAIL (exit 1): [  FAILED  ] T.B' 1
check crashed '[ RUN      ] T.C\n' 139 'crashed: FAIL (exit 139): no gtest failure line; see '"$tmp/log" 1
check empty '' 0 'empty: NOT RUN (0 skipped: no test ran)' 1
echo "gtest_verdict: $passed passed, $failed failed"
((failed == 0))

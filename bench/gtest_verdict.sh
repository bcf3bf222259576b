# Sourced by the device scripts (bench/device_session.sh, bench/*/device_run.sh).
#   gtest_verdict NAME LOG RC
# Prints one line about a gtest run whose output is in LOG and whose exit
# status was RC, and returns 0 only for the first:
#   NAME: PASS (N tests)                         exit 0, N > 0 ran, none skipped
#   NAME: FAIL (exit RC): first failure          a test failed or it crashed
#   NAME: NOT RUN (N skipped: reason)            nothing ran: every test skipped
#   NAME: INCOMPLETE (N passed, M skipped: reason)
# On a GPU machine every GPU test must run, so a skip is never a pass.
gtest_verdict() {
  local name=$1 log=$2 rc=$3 passed skipped reason failure
  passed=$(sed -n 's/^\[  PASSED  \] \([0-9][0-9]*\) tests\{0,1\}\..*/\1/p' "$log" 2>/dev/null | tail -1)
  skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9][0-9]*\) tests\{0,1\},.*/\1/p' "$log" 2>/dev/null | tail -1)
  reason=$(grep -A1 -E ':[0-9]+: Skipped$' "$log" 2>/dev/null | sed -n 2p)
  passed=${passed:-0} skipped=${skipped:-0}
  if [ "$rc" != 0 ]; then
    failure=$(grep -m1 -E '^\[  FAILED  \] [^0-9]|Failure$' "$log" 2>/dev/null)
    echo "$name: FAIL (exit $rc): ${failure:-no gtest failure line; see $log}"
    return 1
  fi
  if [ "$passed" = 0 ]; then
    echo "$name: NOT RUN ($skipped skipped: ${reason:-no test ran})"
    return 1
  fi
  if [ "$skipped" != 0 ]; then
    echo "$name: INCOMPLETE ($passed passed, $skipped skipped: $reason)"
    return 1
  fi
  echo "$name: PASS ($passed tests)"
}

#!/usr/bin/env bash
# The long part of the reliability suite, bounded in time (CI runs the short
# part: ctest -L reliability). Against the real binaries in build/:
#  1. router_bench --mode=soak: SolvePlan at full rate for --seconds (default
#     60) while 1,000 WatchPlans streams are open and a new table lands every
#     5 s; fails on any error, any stream missing a version, or the router's
#     RSS growing (prints p50/p99 and RSS before/after of both servers);
#  2. the fault suite (kill -9 storm, full disk, read-only folder, stuck
#     worker, router kill under watchers) and the bad-input suite repeated
#     --repeat times (default 3), to catch what only fails sometimes.
# The fuzzers' longer run is scripts/fuzz.sh.
#   tests/reliability/soak.sh [--seconds N] [--streams N] [--repeat N]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=60 streams=1000 repeat=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --streams) streams=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    *) echo "usage: $0 [--seconds N] [--streams N] [--repeat N]" >&2; exit 2 ;;
  esac
done
for bin in build/bin/router_bench build/tests/reliability_fault_test build/tests/reliability_bad_input_test; do
  [[ -x $bin ]] || { echo "soak.sh: $bin is missing; build first (bash scripts/build.sh)" >&2; exit 1; }
done
echo "== load: $seconds s, $streams streams ($(date -u +%FT%TZ), $(nproc) cores)"
timeout $((seconds + 300)) build/bin/router_bench --mode=soak --seconds="$seconds" --streams="$streams"
echo "== faults and bad input, $repeat times"
timeout $((repeat * 300)) build/tests/reliability_fault_test --gtest_repeat="$repeat" --gtest_brief=1
timeout $((repeat * 120)) build/tests/reliability_bad_input_test --gtest_repeat="$repeat" --gtest_brief=1
echo "== soak passed"

#!/usr/bin/env bash
# One bounded fuzzing run, as a ctest test (fuzz/MoendFuzz.cmake):
#   ctest_run.sh FUZZER FUZZ_DIR RUNS MAX_SECONDS ARTIFACT_DIR
# Fuzzes a temporary copy of FUZZ_DIR/corpus/<target> (the committed corpus
# is never written) for RUNS executions (libFuzzer's -runs, the corpus replay
# included), stopping early after MAX_SECONDS, a failure guard for a loaded
# machine. Fails on a crash, a leak, a timeout or an out-of-memory (the input
# that did it is kept in ARTIFACT_DIR), and when the fuzzer executed nothing
# or its statistics are missing. The seed is fixed (MOEND_FUZZ_SEED, default
# 1) so that a CI run explores the same inputs each time and a red run is
# reproducible; discovery with fresh seeds is scripts/fuzz.sh.
set -euo pipefail
(($# == 5)) || { echo "usage: ctest_run.sh FUZZER FUZZ_DIR RUNS MAX_SECONDS ARTIFACT_DIR" >&2; exit 2; }
fuzzer=$1 fuzz_dir=$2 runs=$3 max_seconds=$4 artifacts=$5
target=$(basename "$fuzzer")
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive count, got '$runs'" >&2; exit 2; }
[[ $max_seconds =~ ^[1-9][0-9]*$ ]] || { echo "MAX_SECONDS must be positive, got '$max_seconds'" >&2; exit 2; }
[[ -x $fuzzer ]] || { echo "$fuzzer is not built" >&2; exit 1; }
[[ -d $fuzz_dir/corpus/$target ]] || { echo "no corpus $fuzz_dir/corpus/$target" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/$target.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -r "$fuzz_dir/corpus/$target" "$work/corpus"
mkdir -p "$artifacts"
dict=()
[[ $target =~ ^fuzz_(safetensors|model_config|sensitivity_table|plan)$ ]] &&
  dict=(-dict="$fuzz_dir/dict/json.dict")
rc=0
TMPDIR=$work "$fuzzer" -seed="${MOEND_FUZZ_SEED:-1}" -runs="$runs" -max_total_time="$max_seconds" \
  -timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 "${dict[@]}" \
  -artifact_prefix="$artifacts/$target-" "$work/corpus" >"$work/log" 2>&1 || rc=$?
if ((rc != 0)); then
  grep -v '^\[libprotobuf' "$work/log" | tail -80
  echo "$target: FAILED (exit $rc); reproduce with: $fuzzer $artifacts/$target-<crash file>"
  exit 1
fi
executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
if ! [[ $executed =~ ^[0-9]+$ ]] || ((executed == 0)); then
  tail -40 "$work/log"
  echo "$target: FAILED: executed '${executed}' inputs (no final statistics, or nothing ran)"
  exit 1
fi
cov=$(grep -o 'cov: [0-9]*' "$work/log" | tail -1)
capped=""
((executed < runs)) && capped=" (stopped by the ${max_seconds} s cap)"
echo "$target: $executed of $runs runs$capped, $cov, corpus $(ls "$work/corpus" | wc -l) inputs, no crash"

#!/usr/bin/env bash
# One bounded fuzzing run, as a ctest test (fuzz/MoendFuzz.cmake):
#   ctest_run.sh FUZZER FUZZ_DIR SECONDS ARTIFACT_DIR
# Fuzzes a temporary copy of FUZZ_DIR/corpus/<target> (the committed corpus
# is never written), for SECONDS, and fails on a crash, a leak, a timeout or
# an out-of-memory; the input that did it is kept in ARTIFACT_DIR. The seed
# is fixed (MOEND_FUZZ_SEED, default 1) so that a CI run explores the same
# inputs each time and a red run is reproducible; discovery with fresh seeds
# is scripts/fuzz.sh.
set -euo pipefail
fuzzer=$1 fuzz_dir=$2 seconds=$3 artifacts=$4
target=$(basename "$fuzzer")
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
TMPDIR=$work "$fuzzer" -seed="${MOEND_FUZZ_SEED:-1}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -max_len=8192 -print_final_stats=1 "${dict[@]}" \
  -artifact_prefix="$artifacts/$target-" "$work/corpus" >"$work/log" 2>&1 || rc=$?
if ((rc != 0)); then
  grep -v '^\[libprotobuf' "$work/log" | tail -80
  echo "$target: FAILED (exit $rc); reproduce with: $fuzzer $artifacts/$target-<crash file>"
  exit 1
fi
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log")
cov=$(grep -o 'cov: [0-9]*' "$work/log" | tail -1)
echo "$target: ${seconds}s, $runs runs, $cov, corpus $(ls "$work/corpus" | wc -l) inputs, no crash"

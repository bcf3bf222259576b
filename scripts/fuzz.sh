#!/usr/bin/env bash
# The long fuzzing run (CI runs each target for MOEND_FUZZ_RUNS executions only).
#   scripts/fuzz.sh [--seconds N] [target...]
# Builds the libFuzzer targets of fuzz/ with clang into build-fuzz/, then runs
# each target (default: all) for N seconds (default 600) on a work corpus in
# out/fuzz/corpus/<target>, which starts as a copy of fuzz/corpus/<target>
# and keeps growing across runs. Crashes go to out/fuzz/artifacts/. Prints
# per target: executions, coverage, work corpus size, crashes; and how to
# fold new inputs into the committed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=600
targets=()
while (($#)); do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --seconds=*) seconds=${1#*=}; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("${1#fuzz_}"); shift ;;
  esac
done
all=(safetensors model_config model_load sensitivity_table plan registry_rpc router_rpc)
((${#targets[@]})) || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target $t (known: ${all[*]})" >&2; exit 2; }
done

build=build-fuzz
cxx=$(command -v clang++-14 || command -v clang++ || true)
cc=$(command -v clang-14 || command -v clang || true)
[[ -n $cxx && -n $cc ]] || { echo "fuzz.sh: needs clang (scripts/install_deps.sh installs clang-14)" >&2; exit 1; }
cmake -S fuzz -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="$cc" >/dev/null
cmake --build "$build" -j "${MOEND_BUILD_JOBS:-$(nproc)}"

out=out/fuzz
mkdir -p "$out/corpus" "$out/artifacts" "$out/logs"
summary=()
failed=0
for t in "${targets[@]}"; do
  name=fuzz_$t
  corpus=$out/corpus/$name
  mkdir -p "$corpus"
  cp -n fuzz/corpus/$name/* "$corpus/" 2>/dev/null || true
  dict=()
  [[ $t =~ ^(safetensors|model_config|sensitivity_table|plan)$ ]] && dict=(-dict=fuzz/dict/json.dict)
  before=$(ls "$out/artifacts" | grep -c "^$name-" || true)
  echo "== $name: ${seconds}s on $corpus"
  rc=0
  "$build/$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 "${dict[@]}" -artifact_prefix="$out/artifacts/$name-" "$corpus" \
    >"$out/logs/$name.log" 2>&1 || rc=$?
  after=$(ls "$out/artifacts" | grep -c "^$name-" || true)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/logs/$name.log")
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$out/logs/$name.log" | tail -1)
  line=$(printf '%-24s %10s execs  %-22s corpus %5d  crashes %d' "$name" "${runs:-?}" "$cov" \
         "$(ls "$corpus" | wc -l)" $((after - before)))
  if ((rc != 0)); then
    failed=1
    line+="  FAILED (exit $rc, log $out/logs/$name.log)"
    grep -v '^\[libprotobuf' "$out/logs/$name.log" | grep -E 'ERROR|FUZZ_CHECK|runtime error|Test unit written' | head -5
  fi
  echo "$line"
  summary+=("$line")
done

echo
echo "== summary (${seconds}s per target; logs in $out/logs, crashes in $out/artifacts)"
printf '%s\n' "${summary[@]}"
cat <<'HELP'

To keep what was found, merge the work corpus into the committed one (only
inputs that add coverage are copied), check its size, and commit:
  build-fuzz/fuzz_<target> -merge=1 fuzz/corpus/fuzz_<target> out/fuzz/corpus/fuzz_<target>
  du -sh fuzz/corpus            # keep the whole corpus well under 1 MB
  git add fuzz/corpus/fuzz_<target> && git commit -m "fuzz: corpus" -- fuzz/corpus/fuzz_<target>
A crash: reproduce with build-fuzz/fuzz_<target> out/fuzz/artifacts/<file>, fix the
code, add a unit test, and copy the input into fuzz/corpus/fuzz_<target>/.
HELP
exit $failed

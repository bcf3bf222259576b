#!/usr/bin/env bash
# The one call a GPU lease makes for issue 14 (both parts), time-boxed so that
# whatever finished comes back:
#  1. builds the core-only CUDA build (sm_90) of the worker's and kernels'
#     targets and, beside it, the kernels with the variant flags of
#     docs/KERNELS.md "Known limits"; meanwhile writes the synthetic qwen2-7b
#     checkpoint and 16 x 16,384 random token ids to the device's disk
#     (scripts/make_synthetic_model.py);
#  2. the CUDA tests of the worker (gpu_model_test, gpu_calibrator_test) and
#     of the kernels (kernels_test CudaTest.* and CudaResidentTest.*);
#  3. the 7B end to end: calibration_gpu_bench loads qwen2-7b with the
#     worker's loader and calibrates the 16 sequences over the 112-tuple grid
#     with the BF16 GPU forward: load time, total, per sequence forward (its
#     attention) and grid, peak GPU memory. If the BF16 run fails, the fp32
#     forward on 2 sequences instead, so that the load and shapes are still
#     measured;
#  4. BF16 vs fp32 forward tables (Spearman, median and worst relative
#     difference): the shipped model (16 x 4096 of data/calibration.bin) and
#     qwen2-tiny (q/k/v bias, vocabulary 152064);
#  5. the decode experiment: bench/kernels/device_run.sh with the three
#     variants, the split sweep and ncu (SDPA and copy bandwidth in the same
#     run), in the time left;
#  6. a summary of all of it.
#   bench/device_session.sh [--quick]
# --quick (fits a 15-minute lease with its start): 8-minute deadline instead
#   of 9.5, decode at 10 iterations a case, splits 0,8,12,33 instead of
#   0,6,8,11,12,16,22,24,33, of the CUDA tests only gpu_model_test (the
#   kernels' run inside step 5), no CPU worker_test and no CPU-forward
#   comparison. Either way the steps run in this order and each gets what is
#   left of the deadline, so a slow build cuts the decode experiment first.
# At most 8 files come back from $OUT (session.log is this output); the rest
# stays on the device under $OUT/more/logs/all. MOEND_SESSION_WORK (default
# /tmp/moend-session) holds the builds and models; MOEND_SESSION_SECONDS
# overrides the deadline; MOEND_VARIANT_FLAGS the variant.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
quick=0
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    *) echo "unknown argument '$a'; usage: bench/device_session.sh [--quick]" >&2; exit 2 ;;
  esac
done
out=${OUT:-/tmp/moend-out}
logs=$out/more/logs/all  # 3 folders down: stays on the device
mkdir -p "$out" "$logs"
work=${MOEND_SESSION_WORK:-/tmp/moend-session}
base=$work/build
variant=$base-variant  # the folder bench/kernels/device_run.sh builds its variant in
flags=${MOEND_VARIANT_FLAGS:--DMOEND_ATTENTION_UNPACK=1 -DMOEND_ATTENTION_COMBINE=1 -DMOEND_ATTENTION_WAVES=1}
if [ "$quick" = 1 ]; then
  deadline=${MOEND_SESSION_SECONDS:-480} splits=0,8,12,33 decode_args=(--quick --kernels-only)
else
  deadline=${MOEND_SESSION_SECONDS:-570} splits=0,6,8,11,12,16,22,24,33 decode_args=(--kernels-only)
fi
jobs=$(nproc)
prefix=()
[ -d .devdeps/usr ] && prefix=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr") && \
  export LD_LIBRARY_PATH="$PWD/.devdeps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
if [ -z "${MOEND_SESSION_TEE:-}" ]; then  # this output, also in $OUT/session.log
  MOEND_SESSION_TEE=1 bash "$PWD/bench/device_session.sh" "$@" 2>&1 | tee "$out/session.log"
  exit "${PIPESTATUS[0]}"
fi
start=$SECONDS
stamp() { echo "== $1 ($((SECONDS - start)) s)"; }
# Seconds for a phase: at most $1, and never past the deadline less $2.
box() { local b=$(( deadline - (SECONDS - start) - ${2:-0} )); (( b > $1 )) && b=$1; (( b < 1 )) && b=1; echo "$b"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv |
  tee "$out/device.txt"
date -u +%F | tee -a "$out/device.txt"
mkdir -p "$work"

# 1. Builds, with the synthetic models written meanwhile.
m7b=$work/qwen2-7b ids7b=$work/qwen2-7b-ids.bin tiny=$work/qwen2-tiny idstiny=$work/qwen2-tiny-ids.bin
( python3 scripts/make_synthetic_model.py --shape qwen2-7b --out "$m7b" --seed 1 --jobs 8 \
    --tokens "$ids7b" --sequences 16 --seq-len 16384 &&
  python3 scripts/make_synthetic_model.py --shape qwen2-tiny --out "$tiny" --seed 2 --jobs 4 \
    --tokens "$idstiny" --sequences 4 --seq-len 4096 ) > "$logs/generate.log" 2>&1 &
gen_pid=$!
configure() {  # dir cuda-flags: as bench/kernels/device_run.sh configures, so that its builds are no-ops
  cmake -S . -B "$1" -G Ninja -DMOEND_CORE_ONLY=ON -DMOEND_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DMOEND_BUILD_BENCHMARKS=ON -DCMAKE_CUDA_FLAGS="$2" "${prefix[@]}" > "$logs/configure_$(basename "$1").log" 2>&1
}
( configure "$variant" "$flags" && ninja -C "$variant" -j"$((jobs / 2))" kernels_test kernels_gpu_bench \
    > "$logs/build_variant.log" 2>&1 ) &
variant_pid=$!
built=0
if configure "$base" ""; then
  worker_targets=(gpu_model_test gpu_calibrator_test calibration_gpu_bench kernels_test kernels_gpu_bench)
  [ "$quick" = 0 ] && worker_targets+=(worker_test)
  if timeout "$(box 330 180)" ninja -C "$base" -j"$jobs" "${worker_targets[@]}" > "$logs/build.log" 2>&1; then
    built=1
    stamp "base build ok"
  else
    echo "base build FAILED"; grep -E "error|FAILED" -A3 "$logs/build.log" | head -40
  fi
else
  echo "configure FAILED"; tail -20 "$logs/configure_build.log"
fi

# 2. CUDA tests (the failing assertions and the measured differences shown).
source bench/gtest_verdict.sh  # PASS only when every test ran and passed
run_test() {  # name binary seconds [args]: prints its PASSED/FAILED summary and verdict
  local name=$1 bin=$2 secs=$3 rc
  shift 3
  timeout "$secs" "$bin" "$@" > "$logs/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc $(grep -E '^\[  (PASSED|FAILED)' "$logs/$name.log" | tr '\n' ' ')"
  gtest_verdict "$name" "$logs/$name.log" "$rc"
  grep -E "Failure|Expected|Which|actual|BF16 vs fp32|max \||worst" "$logs/$name.log" | head -30
}
if [ "$built" = 1 ]; then
  run_test gpu_model_test "$base/tests/gpu_model_test" "$(box 150 150)" | tee "$out/tests.txt"
  # bench/kernels/device_run.sh runs the kernels' CUDA tests (both builds) in step 5.
  if [ "$quick" = 0 ]; then
    run_test gpu_calibrator_test "$base/tests/gpu_calibrator_test" "$(box 90 150)" | tee -a "$out/tests.txt"
    run_test kernels_cuda_test "$base/tests/kernels_test" "$(box 120 150)" --gtest_filter='CudaTest.*:CudaResidentTest.*' |
      tee -a "$out/tests.txt"
    run_test worker_test "$base/tests/worker_test" "$(box 120 150)" | tee -a "$out/tests.txt"
  fi
  cp "$logs/gpu_model_test.log" "$out/gpu_model_test.log"
  stamp "tests done"
fi

# 3. The 7B end to end (BF16 forward), 4. BF16 vs fp32 tables.
bench=$base/bin/calibration_gpu_bench
if wait "$gen_pid"; then
  stamp "synthetic models written"; grep wrote "$logs/generate.log"
else
  echo "model generation FAILED"; tail -20 "$logs/generate.log"
fi
if [ "$built" = 1 ] && [ -f "$m7b/config.json" ]; then
  timeout "$(box 240 120)" "$bench" --model "$m7b" --data "$ids7b" --samples 16 --seq-len 16384 \
    --gpu-forward bf16 --split-samples 2 --cpu-samples 0 > "$out/e2e_7b.log" 2>&1
  rc=$?
  grep -E "RESULT|check|rror" "$out/e2e_7b.log"
  if [ "$rc" != 0 ]; then
    echo "7B BF16 run FAILED (exit $rc); fp32 forward on 2 sequences instead"
    timeout "$(box 150 100)" "$bench" --model "$m7b" --data "$ids7b" --samples 2 --seq-len 16384 \
      --gpu-forward fp32 --split-samples 1 --cpu-samples 0 >> "$out/e2e_7b.log" 2>&1
    grep -E "RESULT|rror" "$out/e2e_7b.log" | tail -3
  fi
  stamp "7B done"
fi
if [ "$built" = 1 ]; then
  cpu=0
  [ "$quick" = 0 ] && cpu=2
  timeout "$(box 90 90)" "$bench" --model models/tinycode --data data/calibration.bin --samples 16 \
    --compare-fp32 --cpu-samples "$cpu" > "$out/agreement.log" 2>&1
  [ -f "$tiny/config.json" ] &&
    timeout "$(box 60 80)" "$bench" --model "$tiny" --data "$idstiny" --samples 4 --compare-fp32 \
      --cpu-samples 0 >> "$out/agreement.log" 2>&1
  grep -E "RESULT|check|rror" "$out/agreement.log"
  stamp "agreement done"
fi

# 5. The decode experiment in the time left (its builds are done or under way).
wait "$variant_pid" || echo "variant build FAILED (bench/kernels/device_run.sh reports it)"
if [ "$built" = 1 ]; then
  mkdir -p "$logs/decode"
  OUT="$logs/decode" MOEND_GPU_BUILD="$base" MOEND_VARIANT_FLAGS="$flags" MOEND_SPLITS="$splits" MOEND_NCU=1 \
    timeout "$(box 600 15)" bash bench/kernels/device_run.sh "${decode_args[@]}" > "$logs/decode.log" 2>&1
  echo "decode experiment: exit $?"
  cat "$logs/decode/bench.md" "$logs/decode/variant_summary.txt" 2>/dev/null > "$out/decode.md"
  grep -hE "Duration|Issue Slots Busy|No Eligible|Stall|Registers|Achieved Occupancy|Memory Throughput" \
    "$logs/decode/ncu_base.txt" "$logs/decode/ncu_variant.txt" 2>/dev/null | head -40 >> "$out/decode.md"
  grep -E "PASSED|FAILED|CudaTest|build|variant" "$logs/decode.log" | head -20
  stamp "decode done"
fi

# 6. Summary.
echo "== summary ($((SECONDS - start)) s)"
grep -hE ": (exit|PASS|FAIL|NOT RUN|INCOMPLETE)" "$out/tests.txt" 2>/dev/null
awk '
  function get(k,   i) { for (i = 1; i <= NF; ++i) if (index($i, k "=") == 1) return substr($i, length(k) + 2); return "" }
  /^RESULT e2e / {
    goal = get("model") == "qwen2-7b" && get("samples") == 16 ? " (goal 30 s)" : ""
    printf "%s (%s forward): load %s s; %s x %s tokens in %s s%s, %s s a sequence; split over %s: forward %s s (attention %s s), grid %s s a sequence; GpuModel creation %s s; peak GPU memory %s GiB\n",
      get("model"), get("forward"), get("load_s"), get("samples"), get("seq_len"), get("total_s"), goal, get("per_sample_s"),
      get("split_samples"), get("forward_per_sample_s"), get("attention_per_sample_s"), get("grid_per_sample_s"),
      get("create_s"), get("peak_gpu_gib")
  }
  /^RESULT agreement / {
    printf "%s: BF16 vs fp32 table over %s entries: Spearman %s, median relative difference %s, worst %s (layer:tuple %s), worst where s > 1e-6 %s (%s)\n",
      get("model"), get("entries"), get("spearman"), get("median_rel"), get("worst_rel"), get("worst_at"),
      get("worst_rel_above_1e-6"), get("worst_above_at")
  }' "$out/e2e_7b.log" "$out/agreement.log" 2>/dev/null
[ -s "$out/decode.md" ] && cat "$out/decode.md"
echo "done ($((SECONDS - start)) s)"
[ "$built" = 1 ]

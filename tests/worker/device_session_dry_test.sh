#!/usr/bin/env bash
# bench/device_session.sh is the one call a short GPU lease makes for issue 14;
# a broken script wastes that lease. This runs it here with a stubbed
# toolchain: cmake, ninja (whose "binaries" print fixed RESULT and gtest
# lines and log their arguments), nvidia-smi, ncu, and a python3 that writes
# the synthetic models' files instead of their weights (and fails for
# torch, so the SDPA table is skipped). It checks the flow (both builds
# configured as bench/kernels/device_run.sh configures them, the tests, the
# generator's shapes, the 7B run's and the comparisons' arguments, the decode
# experiment with the variant flags, the split sweep and ncu), the summary's
# parsing of the RESULT lines, and the fp32 fallback when the BF16 7B run
# fails.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
export MOEND_DRY_STUBS=$src/tests/util
calls=$tmp/calls.log
export MOEND_DRY_CALLS=$calls
cat > "$tmp/bin/cmake" <<'STUB'
#!/bin/bash
echo "cmake $*" >> "$MOEND_DRY_CALLS"
while [ $# -gt 0 ]; do [ "$1" = "-B" ] && mkdir -p "$2"; shift; done
STUB
cat > "$tmp/bin/ninja" <<'STUB'
#!/bin/bash
echo "ninja $*" >> "$MOEND_DRY_CALLS"
dir=$2
mkdir -p "$dir/bin" "$dir/tests"
cp "$MOEND_DRY_STUBS/stub_kernels_gpu_bench.sh" "$dir/bin/kernels_gpu_bench"
for t in kernels_test gpu_model_test gpu_calibrator_test worker_test; do
  printf '#!/bin/bash\necho "%s $*" >> "$MOEND_DRY_CALLS"\necho "[  PASSED  ] 5 tests."\n' "$t" > "$dir/tests/$t"
done
cat > "$dir/bin/calibration_gpu_bench" <<'BENCH'
#!/bin/bash
echo "calibration_gpu_bench $*" >> "$MOEND_DRY_CALLS"
model= forward=bf16 samples=16 seq=4096 compare=0 data=
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2 ;; --data) data=$2 ;; --gpu-forward) forward=$2 ;; --samples) samples=$2 ;;
    --seq-len) seq=$2 ;; --compare-fp32) compare=1 ;;
  esac
  shift
done
[ -f "$model/config.json" ] && [ -f "$data" ] || { echo "no model $model or data $data"; exit 1; }
name=$(basename "$model")
if [ "$name" = qwen2-7b ] && [ "$forward" = bf16 ] && [ -n "${MOEND_DRY_FAIL_BF16:-}" ]; then
  echo "INTERNAL: cuBLAS error in cublasGemmStridedBatchedEx: status 15"; exit 1
fi
echo "RESULT e2e model=$name forward=$forward samples=$samples seq_len=$seq layers=28 tuples=112 load_s=14.20 total_s=21.400 per_sample_s=1.338 create_s=2.900 split_samples=2 forward_per_sample_s=0.950 attention_per_sample_s=0.420 grid_per_sample_s=0.210 cold_first_sample_s=5.000 peak_gpu_gib=31.50 context_gib=0.50"
[ "$compare" = 1 ] && echo "RESULT agreement model=$name forward=bf16 reference=fp32 entries=1344 spearman=0.999812 median_rel=0.0031 worst_rel=0.41 worst_at=7:(1,8,16) worst_rel_above_1e-6=0.041 worst_above_at=3:(0.25,2,2) fp32_total_s=0.600"
exit 0
BENCH
chmod +x "$dir/bin/"* "$dir/tests/"*
STUB
cat > "$tmp/bin/python3" <<'STUB'
#!/bin/bash
echo "python3 $*" >> "$MOEND_DRY_CALLS"
case "$1" in
  *make_synthetic_model.py)
    out= tokens=
    while [ $# -gt 0 ]; do case $1 in --out) out=$2 ;; --tokens) tokens=$2 ;; esac; shift; done
    mkdir -p "$out" && echo '{"model_type": "qwen2"}' > "$out/config.json" && : > "$tokens"
    echo "wrote $out (stub)"; echo "wrote $tokens (stub)" ;;
  *) exit 1 ;;  # no torch here
esac
STUB
printf '#!/bin/bash\necho "name, driver_version"\necho "stub GPU, 0"\n' > "$tmp/bin/nvidia-smi"
printf '#!/bin/bash\necho "ncu $*" >> "$MOEND_DRY_CALLS"\necho "ncu $*"\n' > "$tmp/bin/ncu"
chmod +x "$tmp/bin/"*
run() {  # out-folder mode-argument [env...]: one session
  local o=$1 mode=$2
  shift 2
  (cd "$src" && env PATH="$tmp/bin:$PATH" OUT="$o" MOEND_SESSION_WORK="$tmp/work" "$@" \
    bash bench/device_session.sh $mode 2>&1)
}
fail() { echo "FAIL: $1"; echo "$out"; echo "--- calls"; cat "$calls"; exit 1; }

out=$(run "$tmp/out" --quick)
grep -q "base build ok" <<<"$out" || fail "no base build"
grep -q -- "-B $tmp/work/build -G Ninja -DMOEND_CORE_ONLY=ON -DMOEND_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90" "$calls" ||
  fail "base not configured as bench/kernels/device_run.sh configures it"
grep -q -- "-B $tmp/work/build-variant .*-DCMAKE_CUDA_FLAGS=-DMOEND_ATTENTION_UNPACK=1 -DMOEND_ATTENTION_COMBINE=1 -DMOEND_ATTENTION_WAVES=1" \
  "$calls" || fail "variant not configured with the three variant flags"
grep -Eq "^ninja -C $tmp/work/build -j[0-9]+ gpu_model_test gpu_calibrator_test calibration_gpu_bench kernels_test kernels_gpu_bench$" \
  "$calls" || fail "base targets"
grep -q "^gpu_model_test" "$calls" || fail "the BF16 forward's tests not run"
grep -q "^kernels_test --gtest_filter=CudaTest" "$calls" || fail "kernel CUDA tests not run"
grep -Eq "^(worker_test|gpu_calibrator_test)" "$calls" && fail "quick mode ran the CPU worker_test or gpu_calibrator_test"
grep -q "make_synthetic_model.py --shape qwen2-7b --out $tmp/work/qwen2-7b --seed 1 .*--tokens $tmp/work/qwen2-7b-ids.bin --sequences 16 --seq-len 16384" \
  "$calls" || fail "7B generator arguments"
grep -q "make_synthetic_model.py --shape qwen2-tiny" "$calls" || fail "qwen2-tiny not generated"
grep -q "^calibration_gpu_bench --model $tmp/work/qwen2-7b --data $tmp/work/qwen2-7b-ids.bin --samples 16 --seq-len 16384 --gpu-forward bf16 .*--cpu-samples 0" \
  "$calls" || fail "7B run arguments"
grep -q "^calibration_gpu_bench --model models/tinycode --data data/calibration.bin --samples 16 --compare-fp32" "$calls" ||
  fail "shipped model comparison arguments"
grep -q "^calibration_gpu_bench --model $tmp/work/qwen2-tiny .*--compare-fp32" "$calls" || fail "qwen2-tiny comparison"
grep -q "^kernels_gpu_bench $tmp/work/build-variant .*--splits 0,8,12,33 .*--quick" "$calls" || fail "variant split sweep"
grep -q "^ncu .*regex:AttentionKernel|Combine" "$calls" || fail "ncu not run"
# The summary parsed from the RESULT lines.
grep -q "qwen2-7b (bf16 forward): load 14.20 s; 16 x 16384 tokens in 21.400 s (goal 30 s), 1.338 s a sequence; split over 2: forward 0.950 s (attention 0.420 s), grid 0.210 s a sequence; GpuModel creation 2.900 s; peak GPU memory 31.50 GiB" \
  <<<"$out" || fail "7B summary"
grep -q "tinycode: BF16 vs fp32 table over 1344 entries: Spearman 0.999812, median relative difference 0.0031, worst 0.41 (layer:tuple 7:(1,8,16)), worst where s > 1e-6 0.041 (3:(0.25,2,2))" \
  <<<"$out" || fail "agreement summary"
grep -Eq "ctx=65536 tuple=\(0.25,2,2\) asked=0 +33 +103.0 +12 +62.0 +1.66x" <<<"$out" || fail "decode variant table"
grep -q "gpu_model_test: exit 0 \[  PASSED  \] 5 tests." <<<"$out" || fail "test summary"
files=$(find "$tmp/out" -maxdepth 1 -type f | wc -l)
(( files <= 8 )) || fail "$files files at the top of \$OUT (at most 8 come back)"
cmp -s <(printf '%s\n' "$out") "$tmp/out/session.log" || fail "session.log is not the output"

# The BF16 7B run fails: the fp32 forward on 2 sequences instead.
: > "$calls"
out=$(run "$tmp/out2" --quick MOEND_DRY_FAIL_BF16=1)
grep -q "7B BF16 run FAILED (exit 1); fp32 forward on 2 sequences instead" <<<"$out" || fail "no fallback"
grep -q "^calibration_gpu_bench --model $tmp/work/qwen2-7b .*--samples 2 --seq-len 16384 --gpu-forward fp32" "$calls" ||
  fail "fallback arguments"
grep -q "qwen2-7b (fp32 forward): load 14.20 s; 2 x 16384 tokens" <<<"$out" || fail "fallback summary"
# Without --quick: every CUDA test, the CPU worker_test, the whole sweep at 50 iterations.
: > "$calls"
out=$(run "$tmp/out3" "")
for t in gpu_model_test gpu_calibrator_test worker_test "kernels_test --gtest_filter=CudaTest"; do
  grep -q "^$t" "$calls" || fail "full mode did not run $t"
done
grep -q "^kernels_gpu_bench $tmp/work/build-variant .*--splits 0,6,8,11,12,16,22,24,33" "$calls" || fail "full sweep"
grep -q "^kernels_gpu_bench .*--quick" "$calls" && fail "full mode ran the decode at 10 iterations"
grep -q "^calibration_gpu_bench --model models/tinycode .*--cpu-samples 2" "$calls" || fail "full mode CPU-forward comparison"
if (cd "$src" && bash bench/device_session.sh --fast > /dev/null 2>&1); then fail "an unknown argument was accepted"; fi
[ -n "${MOEND_DRY_SHOW:-}" ] && echo "$out"
echo "device_session.sh dry run: 1 passed, 0 failed"

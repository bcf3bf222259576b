#!/usr/bin/env bash
# One call on the lent GPU machine: build the GPU calibrator and the GPU
# forward, run their tests (and the CPU calibrator's), time the shipped
# model's calibration end to end (GPU forward + grid, 16 sequences of
# data/calibration.bin), then time the 112-tuple grid per layer side by side
# with the PyTorch peer (calibration_peer.py) on the same GPU and print the
# ratio. Logs under $OUT (or /tmp/moend-out).
#   bench/worker/device_run.sh [--no-tests] [--e2e]
# --e2e: stop after the end-to-end timing (no per-layer benches, no peer).
set -uo pipefail
no_tests=0
e2e_only=0
for arg in "$@"; do
  case "$arg" in
    --no-tests) no_tests=1 ;;
    --e2e) e2e_only=1 ;;
    *) echo "usage: $0 [--no-tests] [--e2e]"; exit 2 ;;
  esac
done
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/moend-out}
mkdir -p "$out"
build=/tmp/moend-gcal-build
prefix=()
[ -d .devdeps/usr ] && prefix=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr") && \
  export LD_LIBRARY_PATH="$PWD/.devdeps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/device.txt"
date -u +%F | tee -a "$out/device.txt"
cmake -S . -B "$build" -G Ninja -DMOEND_CORE_ONLY=ON -DMOEND_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DMOEND_BUILD_BENCHMARKS=ON "${prefix[@]}" > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
ninja -C "$build" -j16 gpu_calibrator_test gpu_model_test worker_test calibration_gpu_bench >> "$out/build.log" 2>&1 || {
  grep -E "error|FAILED" -A3 "$out/build.log" | head -60; exit 1; }
echo "build ok"
if [ "$no_tests" = 0 ]; then
  source bench/gtest_verdict.sh
  "$build/tests/gpu_calibrator_test" > "$out/gpu_calibrator_test.log" 2>&1
  rc=$?
  grep -E "^\[  |worst|Failure|Expected|Which|actual|  " "$out/gpu_calibrator_test.log" | head -80
  gtest_verdict gpu_calibrator_test "$out/gpu_calibrator_test.log" "$rc"
  "$build/tests/gpu_model_test" > "$out/gpu_model_test.log" 2>&1
  rc=$?
  grep -E "^\[  |worst|max \||Failure|Expected|Which|actual|  " "$out/gpu_model_test.log" | head -80
  gtest_verdict gpu_model_test "$out/gpu_model_test.log" "$rc"
  "$build/tests/worker_test" > "$out/worker_test.log" 2>&1
  gtest_verdict worker_test "$out/worker_test.log" "$?"
fi
# The shipped model end to end: GPU forward + grid (RESULT e2e), and the CPU
# forward + GPU grid path on 2 sequences for comparison (RESULT e2e_cpu_forward).
"$build/bin/calibration_gpu_bench" --model models/tinycode --data data/calibration.bin --samples 16 \
  --cpu-samples 2 2>&1 | tee "$out/e2e_bench.log"
[ "$e2e_only" = 1 ] && exit 0
"$build/bin/calibration_gpu_bench" 2>&1 | tee "$out/gpu_bench.log"
"$build/bin/calibration_gpu_bench" --exact --reps 5 2>&1 | grep RESULT | tee -a "$out/gpu_bench.log"
"$build/bin/calibration_gpu_bench" --profile --reps 1 2>&1 | grep PROFILE | tee -a "$out/gpu_bench.log"
for shape in "--tokens 16384 --heads 28 --kv-heads 4 --dim 128" "--tokens 4096 --heads 4 --kv-heads 2 --dim 64"; do
  PYTHONUNBUFFERED=1 python3 bench/worker/calibration_peer.py $shape 2>&1 | tee -a "$out/calib_peer.log" | tail -2
done
python3 - "$out/gpu_bench.log" "$out/calib_peer.log" <<'PY'
import re, sys
gpu = {}
for line in open(sys.argv[1]):
    m = re.search(r"RESULT gpu entry=device shape=\S+ tokens=(\d+) .* ms=([\d.]+) .*exact=0", line)
    if m: gpu[int(m.group(1))] = float(m.group(2))
for line in open(sys.argv[2]):
    m = re.search(r"RESULT peer tokens=(\d+) .* ms=([\d.]+)", line)
    if m and int(m.group(1)) in gpu:
        t = int(m.group(1)); p = float(m.group(2))
        print(f"RATIO tokens={t} peer_ms={p:.1f} gpu_ms={gpu[t]:.2f} speedup={p / gpu[t]:.1f}x")
PY

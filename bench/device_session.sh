#!/usr/bin/env bash
# Everything a short GPU lease checks, in one call (each phase time-boxed so
# that partial results still come back under $OUT):
#  1. one build of the CUDA targets (sm_90) and, in parallel, a second build of
#     the kernels with MOEND_VARIANT_FLAGS (default: without the cp.async
#     pipeline, the comparison point);
#  2. the GPU forward and calibrator tests, and the shipped model's
#     calibration end to end (bench/worker: RESULT e2e ...);
#  3. the CUDA kernel tests of both builds;
#  4. decode at batch 8 / 64k and 128k, every tuple, both builds, and torch
#     SDPA over an fp16 cache in the same call (ratios).
#   bench/device_session.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-/tmp/moend-out}
mkdir -p "$out"
logs=$out/more/build/logs  # 3 folders down: stays on the device (8 files come back)
mkdir -p "$logs"
base=/tmp/moend-session
variant=/tmp/moend-session-variant
flags=${MOEND_VARIANT_FLAGS:--DMOEND_ATTENTION_PIPELINE=0}
prefix=()
[ -d .devdeps/usr ] && prefix=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr") && \
  export LD_LIBRARY_PATH="$PWD/.devdeps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
start=$SECONDS
stamp() { echo "== $1 ($((SECONDS - start)) s)"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv |
  tee "$out/device.txt"
date -u +%F | tee -a "$out/device.txt"
configure() {  # dir cuda-flags
  cmake -S . -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEND_CORE_ONLY=ON -DMOEND_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DMOEND_BUILD_BENCHMARKS=ON -DCMAKE_CUDA_FLAGS="$2" \
    "${prefix[@]}" > "$logs/configure_$(basename "$1").log" 2>&1
}
configure "$base" "" || { tail -30 "$logs/configure_$(basename "$base").log"; exit 1; }
configure "$variant" "$flags" || echo "variant configure failed"
( ninja -C "$variant" -j8 kernels_test kernels_gpu_bench > "$logs/build_variant.log" 2>&1 &&
  echo ok > "$logs/variant_built" ) &
variant_pid=$!
ninja -C "$base" -j16 gpu_model_test gpu_calibrator_test worker_test calibration_gpu_bench \
  kernels_test kernels_gpu_bench > "$logs/build.log" 2>&1 || {
  grep -E "error|FAILED" -A3 "$logs/build.log" | head -60; exit 1; }
stamp "base build ok"

source bench/gtest_verdict.sh  # PASS only when every test ran and passed
timeout 120 "$base/tests/gpu_model_test" > "$out/gpu_model_test.log" 2>&1
rc=$?
grep -E "^\[  |max \||worst|Failure|Expected|Which|actual|layer" "$out/gpu_model_test.log" | head -60
gtest_verdict gpu_model_test "$out/gpu_model_test.log" "$rc"
timeout 90 "$base/bin/calibration_gpu_bench" --model models/tinycode --data data/calibration.bin \
  --samples 16 --cpu-samples 2 > "$out/e2e_bench.log" 2>&1
grep -E "RESULT|check|rror" "$out/e2e_bench.log"
stamp "calibration done"
timeout 60 "$base/tests/gpu_calibrator_test" > "$logs/gpu_calibrator_test.log" 2>&1
gtest_verdict gpu_calibrator_test "$logs/gpu_calibrator_test.log" "$?"
timeout 90 "$base/tests/kernels_test" --gtest_filter='CudaTest.*' > "$out/kernels_test.log" 2>&1
rc=$?
grep -E "^\[  FAILED|Failure" "$out/kernels_test.log" | head -20
gtest_verdict CudaTest "$out/kernels_test.log" "$rc"
stamp "base tests done"

wait "$variant_pid"
cases=(--batch 8 --ctx 65536,131072 --splits 0 --no-compress --quick)
timeout 60 "$base/bin/kernels_gpu_bench" "${cases[@]}" > /dev/null 2>&1  # warm-up (clocks)
timeout 60 "$base/bin/kernels_gpu_bench" "${cases[@]}" > "$out/decode_base.log" 2>&1
if [ -f "$logs/variant_built" ]; then
  stamp "variant build ok"
  timeout 90 "$variant/tests/kernels_test" --gtest_filter='CudaTest.*' > "$out/variant_test.log" 2>&1
  gtest_verdict "variant CudaTest" "$out/variant_test.log" "$?" ||
    grep -E "Failure|Expected|Which|actual|FAILED" "$out/variant_test.log" | head -20
  timeout 60 "$variant/bin/kernels_gpu_bench" "${cases[@]}" > "$out/decode_variant.log" 2>&1
else
  echo "variant build FAILED"; grep -E "error" -A3 "$logs/build_variant.log" | head -30
fi
timeout 90 python3 - "$out" <<'PY' 2>&1 | tee "$out/decode_summary.txt"
import os, re, sys
sys.path.insert(0, "bench/kernels")
from sdpa_peer import sdpa_us
out = sys.argv[1]
def parse(name):
    res, copy = {}, None
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return res, copy
    for line in open(path):
        m = re.search(r"RESULT device .*copy_tbps=([\d.]+)", line)
        if m: copy = float(m.group(1))
        m = re.search(r"RESULT decode batch=(\d+) ctx=(\d+) tuple=(\S+) us=([\d.]+) bytes=\d+ tbps=([\d.]+)", line)
        if m: res[(int(m.group(1)), int(m.group(2)), m.group(3))] = (float(m.group(4)), float(m.group(5)))
    return res, copy
base, copy = parse("decode_base.log")
var, _ = parse("decode_variant.log")
sdpa = {ctx: sdpa_us(8, ctx, 20)[0] for ctx in (65536, 131072)}
print(f"copy bandwidth {copy} TB/s; SDPA fp16 batch 8: " + ", ".join(f"{c}: {u:.0f} us" for c, u in sdpa.items()))
print("| ctx | tuple | base us | base x SDPA | base %copy | variant us | variant x SDPA | variant %copy |")
print("|---|---|---|---|---|---|---|---|")
for (b, ctx, tup), (us, tb) in sorted(base.items()):
    v = var.get((b, ctx, tup))
    vs = f"{v[0]:.1f} | {sdpa[ctx] / v[0]:.2f}x | {100 * v[1] / copy:.0f}%" if v and copy else "- | - | -"
    print(f"| {ctx} | {tup} | {us:.1f} | {sdpa[ctx] / us:.2f}x | {100 * tb / copy:.0f}% | {vs} |")
PY
stamp "done"

#!/usr/bin/env bash
# One call on the lent GPU machine (the way docs/BENCHMARKS.md "## Kernels" was
# recorded): configure + build the CUDA targets, run the CUDA kernel tests,
# the decode benchmark side by side with torch SDPA, and the PyTorch
# calibration peer (bench/worker/calibration_peer.py). Logs under $OUT (or
# /tmp/moend-out).
#   bench/kernels/device_run.sh [--quick]
# MOEND_VARIANT_FLAGS="-DMOEND_ATTENTION_MIN_BLOCKS=2" also builds and times a
# second variant of the attention kernel (bench only) for comparison.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/moend-out}
mkdir -p "$out"
build=/tmp/moend-gpu-build
prefix=()
[ -d .devdeps/usr ] && prefix=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr") && \
  export LD_LIBRARY_PATH="$PWD/.devdeps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv | tee "$out/device.txt"
configure() {  # build_dir extra-cuda-flags
  cmake -S . -B "$1" -G Ninja -DMOEND_CORE_ONLY=ON -DMOEND_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DMOEND_BUILD_BENCHMARKS=ON -DCMAKE_CUDA_FLAGS="$2" "${prefix[@]}" >> "$out/build.log" 2>&1
}
configure "$build" "" || { tail -30 "$out/build.log"; exit 1; }
ninja -C "$build" -j16 kernels_test kernels_gpu_bench >> "$out/build.log" 2>&1 || {
  grep -E "error|FAILED" -A3 "$out/build.log" | head -60; exit 1; }
echo "build ok"
"$build/tests/kernels_test" --gtest_filter='CudaTest.*' 2>&1 | tee "$out/kernels_test.log" |
  grep -E "^\[  |decode|probe|Failure|Expected|Which|actual" | tail -60
python3 bench/kernels/sdpa_peer.py "$build/bin/kernels_gpu_bench" ${1:+$1} --out "$out/bench.md" > "$out/bench.log" 2>&1
cat "$out/bench.md" 2>/dev/null || tail -20 "$out/bench.log"
if [ -n "${MOEND_VARIANT_FLAGS:-}" ]; then
  configure "$build-variant" "$MOEND_VARIANT_FLAGS" && ninja -C "$build-variant" -j16 kernels_gpu_bench >> "$out/build.log" 2>&1 &&
    "$build-variant/bin/kernels_gpu_bench" --quick | grep "decode batch=8" | tee "$out/variant.log"
fi
for shape in "--tokens 16384 --heads 28 --kv-heads 4 --dim 128" "--tokens 4096 --heads 4 --kv-heads 2 --dim 64"; do
  PYTHONUNBUFFERED=1 python3 bench/worker/calibration_peer.py $shape 2>&1 | tee -a "$out/calib_peer.log" | tail -3
done

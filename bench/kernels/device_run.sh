#!/usr/bin/env bash
# One call on the lent GPU machine (the way docs/BENCHMARKS.md "## Kernels" was
# recorded): configure + build the CUDA targets, run the CUDA kernel tests,
# the decode benchmark side by side with torch SDPA, and the PyTorch
# calibration peer (bench/worker/calibration_peer.py). Logs under $OUT (or
# /tmp/moend-out).
#   bench/kernels/device_run.sh [--quick] [--kernels-only]
#     --quick         10 timed iterations per case instead of 50 (sdpa_peer.py)
#     --kernels-only  skip the calibration peer
# MOEND_VARIANT_FLAGS="-DMOEND_ATTENTION_PIPELINE=0" also builds a second
# variant of the kernels with those CUDA flags (kernels_test and
# kernels_gpu_bench in $build-variant), runs its CudaTest.* and CudaResidentTest.* and times base and
# variant side by side at batch 8 / 64k and 128k, every tuple, for each split
# count in MOEND_SPLITS (default "0,12,24"; 0 = AttentionSplits()' choice).
# MOEND_NCU=1 also profiles one decode (attention + combine launch) of
# MOEND_NCU_TUPLE (default 0.25/2/2) at batch 8 / 64k with Nsight Compute
# (clocks left alone), base and variant: speed of light, warp states,
# scheduler, pipes, instruction mix, occupancy, as text in $OUT/ncu_base.txt
# and ncu_variant.txt.
# The experiment prepared for issue 3's two open goals (docs/KERNELS.md,
# "Known limits"), one call:
#   MOEND_VARIANT_FLAGS="-DMOEND_ATTENTION_UNPACK=1 -DMOEND_ATTENTION_COMBINE=1 -DMOEND_ATTENTION_WAVES=1" \
#   MOEND_SPLITS=0,6,8,11,12,16,22,24,33 MOEND_NCU=1 bench/kernels/device_run.sh --quick --kernels-only
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
quick=() kernels_only=0
for a in "$@"; do
  case "$a" in
    --quick) quick=(--quick) ;;
    --kernels-only) kernels_only=1 ;;
    *) echo "unknown argument '$a'; usage: device_run.sh [--quick] [--kernels-only]" >&2; exit 2 ;;
  esac
done
out=${OUT:-/tmp/moend-out}
mkdir -p "$out"
build=${MOEND_GPU_BUILD:-/tmp/moend-gpu-build}  # and $build-variant
jobs=$(nproc)
prefix=()
[ -d .devdeps/usr ] && prefix=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr") && \
  export LD_LIBRARY_PATH="$PWD/.devdeps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv | tee "$out/device.txt"
configure() {  # build_dir extra-cuda-flags [log]
  cmake -S . -B "$1" -G Ninja -DMOEND_CORE_ONLY=ON -DMOEND_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DMOEND_BUILD_BENCHMARKS=ON -DCMAKE_CUDA_FLAGS="$2" "${prefix[@]}" >> "${3:-$out/build.log}" 2>&1
}
build_targets() {  # build_dir [log]
  ninja -C "$1" -j"$jobs" kernels_test kernels_gpu_bench >> "${2:-$out/build.log}" 2>&1
}
source bench/gtest_verdict.sh
cuda_tests() {  # build_dir log name: CudaTest.* with each case's error, the gtest
  # summary and a verdict line (PASS only when every test ran and passed)
  "$1/tests/kernels_test" --gtest_filter='CudaTest.*:CudaResidentTest.*' > "$2" 2>&1
  local rc=$?
  grep -E "^\[  |decode|probe|Failure|Expected|Which|actual" "$2" | tail -60
  gtest_verdict "$3" "$2" "$rc"
}
start=$SECONDS
vbuild="$build-variant"
variant_pid=
if [ -n "${MOEND_VARIANT_FLAGS:-}" ]; then
  # The variant builds beside the base (the cores are shared; the two builds
  # together take about as long as one after the other, without the wait).
  rm -f "$vbuild/.built"
  ( configure "$vbuild" "$MOEND_VARIANT_FLAGS" "$out/build_variant.log" &&
      build_targets "$vbuild" "$out/build_variant.log" && touch "$vbuild/.built" ) &
  variant_pid=$!
fi
configure "$build" "" || { tail -30 "$out/build.log"; exit 1; }
build_targets "$build" || { grep -E "error|FAILED" -A3 "$out/build.log" | head -60; exit 1; }
echo "build ok ($((SECONDS - start)) s)"
cuda_tests "$build" "$out/kernels_test.log" "CudaTest"
python3 bench/kernels/sdpa_peer.py "$build/bin/kernels_gpu_bench" "${quick[@]}" --out "$out/bench.md" > "$out/bench.log" 2>&1
cat "$out/bench.md" 2>/dev/null || tail -20 "$out/bench.log"
if [ -n "$variant_pid" ]; then
  wait "$variant_pid"
  echo "== variant: CUDA flags '$MOEND_VARIANT_FLAGS' ($((SECONDS - start)) s)"
  if [ -f "$vbuild/.built" ]; then
    echo "variant build ok ($((SECONDS - start)) s)"
    cuda_tests "$vbuild" "$out/variant_test.log" "variant CudaTest"
    # Same cases, same process order for both builds; ratio = base us / variant us.
    cases=(--batch 8 --ctx "65536,131072" --splits "${MOEND_SPLITS:-0,12,24}" --no-compress "${quick[@]}")
    for which in base variant; do
      dir=$build
      [ "$which" = variant ] && dir=$vbuild
      "$dir/bin/kernels_gpu_bench" "${cases[@]}" | sed -n "s/^RESULT /$which /p"
    done > "$out/variant.log" 2>&1
    awk '
      $2 == "device" { for (i = 3; i <= NF; ++i) if ($i ~ /^copy_tbps=/) copy[$1] = substr($i, 11) }
      $2 == "decode" {
        us = $6; tb = $8; sub(/us=/, "", us); sub(/tbps=/, "", tb)
        used = ""; asked = ""
        for (i = 9; i <= NF; ++i) {
          if ($i ~ /^splits=/) used = substr($i, 8)
          if ($i ~ /^asked=/) asked = substr($i, 7)
        }
        key = $4 " " $5 " asked=" asked
        t[$1, key] = us; bw[$1, key] = tb; sp[$1, key] = used; if ($1 == "base") order[++n] = key
      }
      END {
        printf "%-44s %6s %9s %6s %10s %8s %9s\n", "batch=8 case (ctx tuple asked splits)", "base", "base us",
               "var", "variant us", "speedup", "var %copy"
        for (i = 1; i <= n; ++i) {
          k = order[i]
          if (t["variant", k] == "") { printf "%-44s %6s %9s %6s %10s\n", k, sp["base", k], t["base", k], "-", "missing"; continue }
          printf "%-44s %6s %9.1f %6s %10.1f %7.2fx %8.0f%%\n", k, sp["base", k], t["base", k], sp["variant", k],
                 t["variant", k], t["base", k] / t["variant", k], 100 * bw["variant", k] / copy["variant"]
        }
      }' "$out/variant.log" | tee "$out/variant_summary.txt"
    # The peer for the ratios: SDPA's batch-8 times from the table above.
    awk -F'|' '$2 ~ /^ 8 / && $4 ~ /1,16,16/ { print "SDPA fp16 batch 8" $3 ":" $9 "us" }' "$out/bench.md" |
      tee -a "$out/variant_summary.txt"
  else
    echo "variant build FAILED"
    grep -E "error|FAILED" -A3 "$out/build_variant.log" | tail -40
  fi
fi
if [ "${MOEND_NCU:-0}" = 1 ]; then
  ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for which in base variant; do
    dir=$build
    [ "$which" = variant ] && dir=$build-variant
    [ -x "$dir/bin/kernels_gpu_bench" ] && [ -n "$ncu_bin" ] || continue
    echo "== ncu $which ($((SECONDS - start)) s)"
    timeout 180 "$ncu_bin" --clock-control none --kernel-name regex:'AttentionKernel|Combine' --launch-skip 6 \
      --launch-count 2 \
      --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
      --section InstructionStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
      "$dir/bin/kernels_gpu_bench" --batch 8 --ctx 65536 --tuples "${MOEND_NCU_TUPLE:-0.25/2/2}" --no-compress \
      --quick > "$out/ncu_$which.txt" 2>&1
    grep -E "Duration|Issue Slots Busy|Issued Warp|No Eligible|Stall|Executed Ipc|Registers|Achieved Occupancy|Memory Throughput|Pipe" \
      "$out/ncu_$which.txt" | head -30
  done
  [ -n "$ncu_bin" ] || echo "ncu not found"
fi
if [ "$kernels_only" = 0 ]; then
  for shape in "--tokens 16384 --heads 28 --kv-heads 4 --dim 128" "--tokens 4096 --heads 4 --kv-heads 2 --dim 64"; do
    # shellcheck disable=SC2086  # $shape is a list of arguments
    PYTHONUNBUFFERED=1 python3 bench/worker/calibration_peer.py $shape 2>&1 | tee -a "$out/calib_peer.log" | tail -3
  done
fi
echo "done ($((SECONDS - start)) s)"

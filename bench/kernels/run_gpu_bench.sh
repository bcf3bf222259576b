#!/usr/bin/env bash
# One command on a GPU machine: build the kernels (sm_90 by default), run the
# kernel tests, then the side-by-side benchmark vs torch SDPA.
#   bench/kernels/run_gpu_bench.sh [BUILD_DIR] [extra cmake args...]
# On the lent device machine the deps come from .devdeps (scripts/device_bundle.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-/tmp/moend-kernels-build}
shift || true
arch=${MOEND_CUDA_ARCH:-90}
prefix=()
[ -d .devdeps/usr ] && prefix=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr")
cmake -S . -B "$build" -G Ninja -DMOEND_CORE_ONLY=ON -DMOEND_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
  -DMOEND_BUILD_BENCHMARKS=ON "${prefix[@]}" "$@"
ninja -C "$build" kernels_test kernels_gpu_bench kernels_cpu_bench
if [ -d .devdeps/usr ]; then export LD_LIBRARY_PATH="$PWD/.devdeps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"; fi
"$build/tests/kernels_test"
python3 bench/kernels/sdpa_peer.py "$build/bin/kernels_gpu_bench" ${QUICK:+--quick} ${OUT:+--out "$OUT/bench.md"}

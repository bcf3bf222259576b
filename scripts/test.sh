#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, runs every test with
# ctest. Extra arguments go to ctest (e.g. -L core).
# Beyond "every test passed", CI asks (scripts/ctest_policy.py): every test
# has a TIMEOUT and fuzzers run alone (test ci_ctest_config), and a test that
# skipped said why, for a reason that holds on this machine (after the run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
# install_deps.sh installs clang-14 and libFuzzer: the fuzzers must build.
bash scripts/build.sh -DMOEND_FUZZ=ON  # up.sh builds without the fuzzers
if grep -q "^MOEND_CUDA:STRING=OFF" build/CMakeCache.txt &&
   { command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; }; then
  # No GPU here: still check that the CUDA kernels, the GPU calibrator and the
  # GPU tests compile for sm_80 and sm_90 (the tests run where a GPU is).
  echo "== compiling the CUDA libraries and GPU tests (sm_80, sm_90) in build-cuda/"
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEND_CORE_ONLY=ON -DMOEND_CUDA=ON \
    -DMOEND_BUILD_TESTS=ON -DMOEND_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build build-cuda -j "${MOEND_BUILD_JOBS:-$(nproc)}" --target moend_kernels moend_calibration \
    kernels_test gpu_calibrator_test gpu_model_test
  # The kernel variants that bench/kernels/device_run.sh measures next to the
  # default (docs/KERNELS.md, "Known limits") must build too.
  echo "== compiling the kernel variants (sm_90) in build-cuda-variant/"
  cmake -S . -B build-cuda-variant -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEND_CORE_ONLY=ON -DMOEND_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DMOEND_BUILD_TESTS=OFF -DMOEND_BUILD_BENCHMARKS=OFF \
    "-DCMAKE_CUDA_FLAGS=-DMOEND_ATTENTION_UNPACK=1 -DMOEND_ATTENTION_COMBINE=1 -DMOEND_ATTENTION_WAVES=1" >/dev/null
  cmake --build build-cuda-variant -j "${MOEND_BUILD_JOBS:-$(nproc)}" --target moend_kernels
fi
junit=$PWD/build/ctest-junit.xml
rm -f "$junit"
rc=0
ctest --test-dir build --output-on-failure -j "$(nproc)" --output-junit "$junit" "$@" || rc=$?
echo "== skipped tests and why (scripts/ctest_policy.py)"
python3 scripts/ctest_policy.py skips "$junit" || rc=1
exit "$rc"

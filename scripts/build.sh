#!/usr/bin/env bash
# Configures and builds moend into build/ (binaries in build/bin). Extra
# arguments go to cmake, e.g. -DMOEND_CUDA=ON.
#
# CUDA: the kernels are built into the binaries when a GPU is visible
# (nvidia-smi -L) and nvcc exists; on a machine without a GPU they would never
# run, so the build is CPU-only there. Set MOEND_CUDA=ON|OFF|AUTO to choose.
# scripts/test.sh still compiles the CUDA libraries for sm_80 and sm_90 on such
# machines (build-cuda/).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${MOEND_BUILD_JOBS:-$(nproc)}
if [[ -z ${MOEND_CUDA:-} ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    MOEND_CUDA=AUTO
  else
    MOEND_CUDA=OFF
  fi
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEND_CUDA="$MOEND_CUDA" "$@"
cmake --build build -j "$jobs"

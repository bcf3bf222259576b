#!/usr/bin/env bash
# Configures and builds moend into build/ (binaries in build/bin). Extra
# arguments go to cmake, e.g. -DMOEND_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${MOEND_BUILD_JOBS:-$(nproc)}
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j "$jobs"

#!/usr/bin/env bash
# Installs every Debian package moend needs to build and test. Idempotent.
# Usage: scripts/install_deps.sh [--bench]   (--bench adds PyTorch CPU for benchmarks)
set -euo pipefail
pkgs=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev libabsl-dev prometheus-cpp-dev nlohmann-json3-dev
  libopenblas-openmp-dev libgtest-dev libgmock-dev libbenchmark-dev
  prometheus yamllint python3-yaml python3-grpcio python3-protobuf python3-grpc-tools
)
if [[ "${1:-}" == "--bench" ]]; then
  pkgs+=(python3-torch python3-numpy)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

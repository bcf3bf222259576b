#!/usr/bin/env bash
# Installs every Debian package moend needs to build and test. Idempotent.
# Usage: scripts/install_deps.sh [--bench] [--report]
#   --bench   adds PyTorch CPU (the peer in the benchmarks)
#   --report  adds matplotlib (figures of scripts/quality_table.sh)
set -euo pipefail
pkgs=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libssl-dev
  librocksdb-dev libabsl-dev prometheus-cpp-dev nlohmann-json3-dev
  libopenblas-openmp-dev libgtest-dev libgmock-dev libbenchmark-dev
  prometheus yamllint python3-yaml python3-grpcio python3-protobuf python3-grpc-tools python3-numpy openssl
  clang-14 libclang-rt-14-dev libomp-14-dev
)
for arg in "$@"; do
  case "$arg" in
    --bench) pkgs+=(python3-torch) ;;
    --report) pkgs+=(python3-matplotlib) ;;
    *) echo "install_deps.sh: unknown option $arg (known: --bench --report)" >&2; exit 2 ;;
  esac
done
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

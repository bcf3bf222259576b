#!/usr/bin/env bash
# Calibration throughput of the CPU fleet: full 112-tuple grid of the shipped
# model over S sequences of 4096 bytes, forward passes included, through a real
# registry with 1 worker (all cores) and then W workers (cores split), in one
# run. Usage: bench/fleet/run_cpu_fleet_bench.sh [SEQUENCES=4] [WORKERS=2]
set -euo pipefail
cd "$(dirname "$0")/../.."
seqs=${1:-4}
workers=${2:-2}
bin=${MOEND_BIN:-build/bin}
cores=$(nproc)
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT

run() {  # run N_WORKERS: prints sequences per second
  local n=$1 threads=$(( cores / $1 ))
  ((threads > 0)) || threads=1
  rm -rf "$tmp/db" "$tmp"/*.log
  "$bin/moend-registry" --db "$tmp/db" --listen 127.0.0.1:0 >"$tmp/registry.log" 2>&1 &
  for _ in $(seq 100); do grep -q "listening on" "$tmp/registry.log" && break; sleep 0.1; done
  local addr
  addr=$(sed -n 's/.*listening on //p' "$tmp/registry.log")
  for i in $(seq "$n"); do
    OMP_NUM_THREADS=$threads "$bin/moend-worker" --registry "$addr" --id "w$i" --models models \
      --threads "$threads" >"$tmp/w$i.log" 2>&1 &
  done
  local t0 t1
  t0=$(date +%s.%N)
  "$bin/moendctl" calibrate --registry "$addr" --model models/tinycode --data data/calibration.bin \
    --seq-len 4096 --samples "$seqs" --samples-per-shard 1 --out "$tmp/table.json" 2>/dev/null
  t1=$(date +%s.%N)
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  python3 -c "print(f'{$seqs / ($t1 - $t0):.4f}')"
}
one=$(run 1)
many=$(run "$workers")
echo "| workers | threads each | sequences | sequences/s |"
echo "|---|---|---|---|"
echo "| 1 | $cores | $seqs | $one |"
echo "| $workers | $(( cores / workers > 0 ? cores / workers : 1 )) | $seqs | $many |"
python3 -c "print(f'speed-up with $workers workers: {$many / $one:.2f}x')"

#!/usr/bin/env bash
# Node memory and capacity, measured on the serving path: a real moend-node,
# N concurrent 4,000-byte prompts through `moendctl generate`, the node's
# resident memory (VmRSS of its process, sampled every 20 ms) before and at
# its peak, for the full cache and the ratio-8 and ratio-14 exact plans of the
# committed table; then the number of sequences decoding at once under a
# fixed --kv-pool-bytes (the moend_node_sequences{state="running"} gauge).
# Usage: bench/node/memory_bench.sh [--counts "1 8 32"] [--new-tokens 64] [--pool-bytes 67108864]
# Prints RESULT lines; needs build/bin/{moend-node,moendctl} (scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
counts="1 8 32"
new_tokens=64
pool=$((64 << 20))
while (($#)); do
  case "$1" in
    --counts) counts=$2; shift 2 ;;
    --new-tokens) new_tokens=$2; shift 2 ;;
    --pool-bytes) pool=$2; shift 2 ;;
    *) echo "usage: $0 [--counts \"1 8 32\"] [--new-tokens N] [--pool-bytes B]" >&2; exit 2 ;;
  esac
done
bin=build/bin
work=$(mktemp -d)
node_pid=
cleanup() {
  if [[ -n $node_pid ]]; then kill "$node_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
table=data/tables/tinycode_calibration_4096x16.json
for r in 8 14; do
  $bin/moendctl solve --table $table --ratio $r --solver exact --out "$work/r$r.json" >/dev/null
done
# 40 distinct 4,000-byte prompts from the held-out text.
python3 - "$work" <<'PY'
import sys
text = open("data/heldout_code.bin", "rb").read()
for i in range(40):
    open(f"{sys.argv[1]}/p{i}.txt", "wb").write(text[i * 1400:i * 1400 + 4000])
PY

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

start_node() {  # extra node flags...
  OMP_WAIT_POLICY=passive $bin/moend-node --model models/tinycode --listen 127.0.0.1:0 --metrics 127.0.0.1:0 "$@" \
    > "$work/node.log" 2>&1 &
  node_pid=$!
  for _ in $(seq 1 300); do
    grep -q "listening on" "$work/node.log" 2>/dev/null && break
    sleep 0.1
  done
  addr=$(sed -n 's/.*listening on \(.*\)$/\1/p' "$work/node.log" | head -1)
  metrics=$(sed -n 's#.*metrics on http://\([^/]*\)/metrics.*#\1#p' "$work/node.log" | head -1)
  [[ -n $addr ]] || { cat "$work/node.log"; exit 1; }
}
stop_node() { kill "$node_pid"; wait "$node_pid" 2>/dev/null || true; node_pid=; }

generate() {  # prompt index, extra flags...
  local i=$1; shift
  $bin/moendctl generate --node "$addr" --input "$work/p$i.txt" --max-new-tokens "$new_tokens" \
    --json --deadline-seconds 3600 "$@" > "$work/out$i.json"
}

for config in full r8 r14; do
  flags=(); gen=()
  case $config in
    full) gen=(--full-cache) ;;
    r8) flags=(--plan "$work/r8.json") ;;
    r14) flags=(--plan "$work/r14.json") ;;
  esac
  for n in $counts; do
    start_node --kv-pool-bytes $((4 << 30)) "${flags[@]}"
    generate 39 "${gen[@]}"  # warm-up: model pages, thread pools, one prefill's buffers
    base=$(rss_kib "$node_pid"); peak=$base
    t0=$(date +%s.%N)
    pids=()
    for i in $(seq 0 $((n - 1))); do generate "$i" "${gen[@]}" & pids+=($!); done
    while kill -0 "${pids[@]}" 2>/dev/null; do
      r=$(rss_kib "$node_pid"); ((r > peak)) && peak=$r
      sleep 0.02
      alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      ((alive)) || break
    done
    wait "${pids[@]}"
    t1=$(date +%s.%N)
    decode=$(python3 - "$work" "$n" "$t0" "$t1" <<'PY'
import json, sys
work, n, t0, t1 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
outs = [json.load(open(f"{work}/out{i}.json")) for i in range(n)]
prefill = sum(o["prefill_seconds"] for o in outs)
decoded = sum(o["generated_tokens"] - 1 for o in outs)
wall = t1 - t0
print(f"wall_seconds={wall:.2f} prefill_seconds_sum={prefill:.2f} "
      f"decode_tokens_per_second={decoded / max(wall - prefill, 1e-9):.1f}")
PY
)
    reserved=$(python3 -c "import json; print(json.load(open('$work/out0.json'))['reserved_bytes'])")
    held=$(python3 -c "import json; print(json.load(open('$work/out0.json'))['kv_cache_bytes'])")
    echo "RESULT memory config=$config sequences=$n rss_base_kib=$base rss_peak_kib=$peak" \
         "growth_bytes=$(((peak - base) * 1024)) reserved_per_sequence=$reserved" \
         "cache_bytes_at_end=$held $decode"
    stop_node
  done
done

# Capacity at a fixed pool: 40 requests, how many decode at once.
for config in full r8; do
  flags=(--kv-pool-bytes "$pool"); gen=()
  [[ $config == full ]] && gen=(--full-cache)
  [[ $config == r8 ]] && flags+=(--plan "$work/r8.json")
  start_node "${flags[@]}"
  pids=(); max_running=0
  for i in $(seq 0 39); do generate "$i" "${gen[@]}" & pids+=($!); done
  while :; do
    run=$(curl -s "http://$metrics/metrics" | awk '/^moend_node_sequences\{state="running"\}/ {print int($2)}')
    ((${run:-0} > max_running)) && max_running=$run
    alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.05
  done
  wait "${pids[@]}"
  echo "RESULT capacity config=$config pool_bytes=$pool max_running=$max_running"
  stop_node
done

#!/usr/bin/env bash
# Node memory and capacity, measured on the serving path: a real moend-node,
# N concurrent 4,000-byte prompts (--prompt-bytes) through `moendctl generate`, the node's
# resident memory (VmRSS of its process, sampled every 20 ms) before and at
# its peak, for the full cache and the ratio-8 and ratio-14 exact plans of the
# committed table; then the number of sequences decoding at once under a
# fixed --kv-pool-bytes (the moend_node_sequences{state="running"} gauge).
# Decode speed comes from the node's own counters (moend_node_decode_tokens_total
# over moend_node_engine_seconds_total{phase="decode"}): over all steps, and
# over the steady window where all N sequences decode together (none queued
# or prefilling), whose mean batch (tokens / steps) is printed beside it.
# Usage: bench/node/memory_bench.sh [--counts "1 8 32"] [--new-tokens 64] [--pool-bytes 67108864]
#        [--prompt-bytes 4000] [--no-capacity] [--capacity-requests 40]
# Prints RESULT lines; needs build/bin/{moend-node,moendctl} (scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
counts="1 8 32"
new_tokens=64
pool=$((64 << 20))
capacity=1
prompt_bytes=4000
capacity_requests=40
while (($#)); do
  case "$1" in
    --counts) counts=$2; shift 2 ;;
    --new-tokens) new_tokens=$2; shift 2 ;;
    --pool-bytes) pool=$2; shift 2 ;;
    --no-capacity) capacity=0; shift ;;
    --prompt-bytes) prompt_bytes=$2; shift 2 ;;
    --capacity-requests) capacity_requests=$2; shift 2 ;;
    *) echo "usage: $0 [--counts \"1 8 32\"] [--new-tokens N] [--pool-bytes B] [--prompt-bytes B] [--no-capacity] [--capacity-requests N]" >&2
       exit 2 ;;
  esac
done
source bench/node/node_lib.sh
table=data/tables/tinycode_code_recall.json  # the default table: per-head plans
for r in 8 14; do
  $bin/moendctl solve --table $table --ratio $r --solver exact --out "$work/r$r.json" >/dev/null
done
# 40 distinct prompts from the held-out text.
python3 - "$work" "$prompt_bytes" <<'PY'
import sys
text, size = open("data/heldout_code.bin", "rb").read(), int(sys.argv[2])
for i in range(40):
    open(f"{sys.argv[1]}/p{i}.txt", "wb").write(text[i * 1400:i * 1400 + size])
PY

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# "running queued prefilling decode_tokens decode_seconds decode_steps prefill_seconds"
# from /metrics.
engine_sample() {
  curl -s "http://$metrics/metrics" | awk '
    /^moend_node_sequences\{state="running"\}/ {r = $2}
    /^moend_node_sequences\{state="queued"\}/ {q = $2}
    /^moend_node_sequences\{state="prefilling"\}/ {p = $2}
    /^moend_node_decode_tokens_total/ {t = $2}
    /^moend_node_engine_seconds_total\{phase="decode"\}/ {s = $2}
    /^moend_node_decode_steps_total/ {n = $2}
    /^moend_node_engine_seconds_total\{phase="prefill"\}/ {f = $2}
    END {print int(r), int(q), int(p), t + 0, s + 0, n + 0, f + 0}'
}


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
    read -r _ _ _ tok0 sec0 _ pre0 <<< "$(engine_sample)"
    win0=; win1=; last_poll=0
    t0=$(date +%s.%N)
    pids=()
    for i in $(seq 0 $((n - 1))); do generate "$i" "${gen[@]}" & pids+=($!); done
    while kill -0 "${pids[@]}" 2>/dev/null; do
      r=$(rss_kib "$node_pid"); ((r > peak)) && peak=$r
      if ((++last_poll % 10 == 0)); then  # the counters every ~0.2 s
        sample=$(engine_sample)
        read -r running queued prefilling _ <<< "$sample"
        if ((running == n && queued == 0 && prefilling == 0)); then
          [[ -n $win0 ]] || win0=$sample
          win1=$sample
        fi
      fi
      sleep 0.02
      alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      ((alive)) || break
    done
    wait "${pids[@]}"
    t1=$(date +%s.%N)
    read -r _ _ _ tok1 sec1 _ pre1 <<< "$(engine_sample)"
    decode=$(python3 - "$t0" "$t1" "$tok0 $sec0" "$tok1 $sec1" "$win0" "$win1" "$pre0 $pre1" "$n" <<'PY'
import sys
t0, t1 = float(sys.argv[1]), float(sys.argv[2])
pre0, pre1 = map(float, sys.argv[7].split())
tok0, sec0 = map(float, sys.argv[3].split())
tok1, sec1 = map(float, sys.argv[4].split())
out = (f"wall_seconds={t1 - t0:.2f} decode_tokens={tok1 - tok0:.0f} "
       f"decode_seconds={sec1 - sec0:.2f} "
       f"decode_tokens_per_second={(tok1 - tok0) / max(sec1 - sec0, 1e-9):.1f} "
       f"prefill_seconds_per_request={(pre1 - pre0) / int(sys.argv[8]):.2f}")
if sys.argv[5] and sys.argv[6]:
    a, b = sys.argv[5].split()[3:6], sys.argv[6].split()[3:6]
    dt, ds, dn = (float(y) - float(x) for x, y in zip(a, b))
    if dn > 0 and ds > 0:
        out += (f" steady_steps={dn:.0f} steady_mean_batch={dt / dn:.2f} "
                f"steady_tokens_per_second={dt / ds:.1f}")
print(out)
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

# Capacity at a fixed pool: N requests (40), how many are admitted at once.
((capacity)) || exit 0
for config in full r8; do
  flags=(--kv-pool-bytes "$pool"); gen=()
  [[ $config == full ]] && gen=(--full-cache)
  [[ $config == r8 ]] && flags+=(--plan "$work/r8.json")
  start_node "${flags[@]}"
  pids=(); max_running=0
  for i in $(seq 0 $((capacity_requests - 1))); do generate "$i" "${gen[@]}" & pids+=($!); done
  while :; do
    run=$(curl -s "http://$metrics/metrics" | awk '/^moend_node_sequences\{state="running"\}/ {print int($2)}')
    ((${run:-0} > max_running)) && max_running=$run
    alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.05
  done
  wait "${pids[@]}"
  echo "RESULT capacity config=$config pool_bytes=$pool requests=$capacity_requests" \
       "max_running=$max_running"
  stop_node
done

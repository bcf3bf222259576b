#!/usr/bin/env bash
# How long a running sequence waits while a new prompt is prefilled, on the
# serving path: a real moend-node (the ratio-8 exact plan of the default
# table), one request decoding a long continuation, and a 4,000-byte prompt
# arriving while it runs. The pause is read from the node's inter-token
# latency histogram (moend_node_inter_token_seconds): the bucket holding the
# largest gap, and how many gaps exceeded 50 ms. Run side by side for each
# --prefill-rows-per-step value given (a huge value prefills a whole prompt
# between two decode steps).
# Usage: bench/node/prefill_pause_bench.sh [--budgets "4096 1099511627776"]
# Prints RESULT lines; needs build/bin/{moend-node,moendctl} (scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
budgets="4096 1099511627776"
while (($#)); do
  case "$1" in
    --budgets) budgets=$2; shift 2 ;;
    *) echo "usage: $0 [--budgets \"4096 1099511627776\"]" >&2; exit 2 ;;
  esac
done
source bench/node/node_lib.sh
$bin/moendctl solve --table data/tables/tinycode_code_recall.json --ratio 8 --solver exact \
  --out "$work/r8.json" >/dev/null
python3 - "$work" <<'PY'
import sys
text = open("data/heldout_code.bin", "rb").read()
open(f"{sys.argv[1]}/short.txt", "wb").write(text[:200])
open(f"{sys.argv[1]}/long.txt", "wb").write(text[50000:54000])
PY

for budget in $budgets; do
  start_node --plan "$work/r8.json" --prefill-rows-per-step "$budget"
  gen() { $bin/moendctl generate --node "$addr" --input "$1" --max-new-tokens "$2" --json \
            --deadline-seconds 600 > "$3"; }
  gen "$work/short.txt" 4 /dev/null  # warm-up (its gaps are in the histogram too; all short)
  gen "$work/short.txt" 700 "$work/a.json" & a=$!
  sleep 1.5
  gen "$work/long.txt" 4 "$work/b.json"
  wait "$a"
  curl -s "http://$metrics/metrics" > "$work/metrics.txt"
  python3 - "$work/metrics.txt" "$budget" "$work/a.json" "$work/b.json" <<'PY'
import json, re, sys
text, budget = open(sys.argv[1]).read(), sys.argv[2]
buckets = [(float(le), float(c)) for le, c in re.findall(
    r'^moend_node_inter_token_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M) if le != "+Inf"]
total = float(re.search(r'^moend_node_inter_token_seconds_count (\S+)$', text, re.M).group(1))
buckets.sort()
lower, upper = 0.0, float("inf")
for le, c in buckets:
    if c >= total:
        upper = le
        break
    lower = le
over_50ms = total - next(c for le, c in buckets if le >= 0.05)
a, b = json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
print(f"RESULT prefill_pause budget={budget} gaps={total:.0f} max_gap_seconds_in=({lower:g},{upper:g}] "
      f"gaps_over_{next(le for le, c in buckets if le >= 0.05):g}s={over_50ms:.0f} "
      f"prompt_prefill_seconds={b['prefill_seconds']:.2f} running_decode_seconds={a['decode_seconds']:.2f}")
PY
  stop_node
done

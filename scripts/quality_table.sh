#!/usr/bin/env bash
# The quality table of the shipped model: every method (full, 1d, 2d_uniform,
# 2d, greedy, exact) at ratios 4, 8, 14 and 20, solved from the committed
# sensitivity table and evaluated with real compression (moendctl eval), plus
# figures. Writes docs/QUALITY.md and docs/figures/*.png.
# Usage: scripts/quality_table.sh [--limit N] [--bpb-windows W] [--table FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
limit=0
windows=8
table=data/tables/tinycode_calibration_4096x16.json
while (($#)); do
  case "$1" in
    --limit) limit=$2; shift 2 ;;
    --bpb-windows) windows=$2; shift 2 ;;
    --table) table=$2; shift 2 ;;
    *) echo "usage: $0 [--limit N] [--bpb-windows W] [--table FILE]" >&2; exit 2 ;;
  esac
done
bash scripts/install_deps.sh --report
[[ -x ${MOENDCTL:-build/bin/moendctl} ]] || bash scripts/build.sh
out=out/quality
rm -rf "$out"
mkdir -p "$out/plans" "$out/results"
plans=full
for ratio in 4 8 14 20; do
  for solver in 1d 2d_uniform 2d greedy exact; do
    plan="$out/plans/${solver}_r${ratio}.json"
    if ${MOENDCTL:-build/bin/moendctl} solve --table "$table" --ratio "$ratio" --solver "$solver" \
         --out "$plan" > /dev/null 2> "$out/plans/${solver}_r${ratio}.err"; then
      plans="$plans,$plan"
    else
      echo "$solver at ratio $ratio: $(cat "$out/plans/${solver}_r${ratio}.err")"
    fi
  done
done
time ${MOENDCTL:-build/bin/moendctl} eval --model models/tinycode --plan "$plans" \
  --retrieval data/retrieval.jsonl --heldout data/heldout_code.bin \
  --limit "$limit" --bpb-windows "$windows" --out-dir "$out/results"
/usr/bin/python3 scripts/quality_report.py --table "$table" --plans "$out/plans" \
  --results "$out/results" --markdown docs/QUALITY.md --figures docs/figures \
  --command "scripts/quality_table.sh --limit $limit --bpb-windows $windows --table $table"
echo "wrote docs/QUALITY.md and docs/figures/"

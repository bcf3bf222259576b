#!/usr/bin/env bash
# The quality table of the shipped model: every per-layer method (full, 1d,
# 2d_uniform, 2d, greedy, exact) solved from the committed code-probe table,
# and the default per-head routing over the code + recall table (moend) with
# its ablations, at ratios 4, 8, 14 and 20, evaluated with real compression
# (moendctl eval), plus figures. Writes docs/QUALITY.md and docs/figures/*.png.
# The per-head tables are committed; --recalibrate measures them again.
# Usage: scripts/quality_table.sh [--limit N] [--bpb-windows W] [--table FILE]
#                                 [--recalibrate]
set -euo pipefail
cd "$(dirname "$0")/.."
limit=0
windows=8
table=data/tables/tinycode_calibration_4096x16.json
moend_table=data/tables/tinycode_code_recall.json
code_heads_table=data/tables/tinycode_code_heads.json
recalibrate=0
while (($#)); do
  case "$1" in
    --limit) limit=$2; shift 2 ;;
    --bpb-windows) windows=$2; shift 2 ;;
    --table) table=$2; shift 2 ;;
    --recalibrate) recalibrate=1; shift ;;
    *) echo "usage: $0 [--limit N] [--bpb-windows W] [--table FILE] [--recalibrate]" >&2; exit 2 ;;
  esac
done
bash scripts/install_deps.sh --report
[[ -x ${MOENDCTL:-build/bin/moendctl} ]] || bash scripts/build.sh
out=out/quality
rm -rf "$out"
mkdir -p "$out/plans" "$out/results"
ctl=${MOENDCTL:-build/bin/moendctl}
if ((recalibrate)) || [[ ! -f $moend_table || ! -f $code_heads_table ]]; then
  # The default calibration (code + recall probes), and the code signal alone.
  time $ctl calibrate --model models/tinycode --data data/calibration.bin --out "$moend_table"
  $ctl calibrate --model models/tinycode --data data/calibration.bin --recall-data none \
    --out "$code_heads_table"
fi
plans=full
# name, table, extra solve flags
methods=(
  "1d|$table|--solver 1d" "2d_uniform|$table|--solver 2d_uniform" "2d|$table|--solver 2d"
  "greedy|$table|--solver greedy" "exact|$table|--solver exact --units layer"
  "perhead_code|$code_heads_table|--solver exact --units head"
  "recall_layer|$moend_table|--solver exact --units layer"
  "moend|$moend_table|"
)
for ratio in 4 8 14 20; do
  for m in "${methods[@]}"; do
    IFS='|' read -r name tab flags <<< "$m"
    plan="$out/plans/${name}_r${ratio}.json"
    # shellcheck disable=SC2086  # flags are words
    if $ctl solve --table "$tab" --ratio "$ratio" $flags --out "$plan" > /dev/null \
         2> "$out/plans/${name}_r${ratio}.err"; then
      plans="$plans,$plan"
    else
      echo "$name at ratio $ratio: $(cat "$out/plans/${name}_r${ratio}.err")"
    fi
  done
done
time ${MOENDCTL:-build/bin/moendctl} eval --model models/tinycode --plan "$plans" \
  --retrieval data/retrieval.jsonl --heldout data/heldout_code.bin \
  --limit "$limit" --bpb-windows "$windows" --out-dir "$out/results"
/usr/bin/python3 scripts/quality_report.py --table "$table" --moend-table "$moend_table" --plans "$out/plans" \
  --results "$out/results" --markdown docs/QUALITY.md --figures docs/figures \
  --command "scripts/quality_table.sh --limit $limit --bpb-windows $windows --table $table"
echo "wrote docs/QUALITY.md and docs/figures/"

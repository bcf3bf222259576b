#!/usr/bin/env bash
# CPU prefill of the shipped model, moend vs PyTorch, same machine, same threads,
# one command. Usage: bench/core/run_forward_bench.sh [THREADS=nproc] [REPEATS=5]
# Needs build/bin/forward_bench and Debian's python3-torch (scripts/install_deps.sh --bench).
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-$(nproc)}
repeats=${2:-5}
lengths=512,4096
bin=build/bin/forward_bench
[[ -x $bin ]] || { echo "build first: $bin missing" >&2; exit 1; }
out=$(mktemp)
OMP_NUM_THREADS=$threads "$bin" models/tinycode data/heldout_code.bin $lengths "$threads" "$repeats" | tee -a "$out"
/usr/bin/python3 bench/core/torch_forward.py --model models/tinycode --input data/heldout_code.bin \
  --golden data/golden --lengths $lengths --threads "$threads" --repeats "$repeats" | tee -a "$out"
/usr/bin/python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {(r["impl"], r["tokens"]): r["median_s"] for r in rows}
print("\n| tokens | moend (s) | PyTorch (s) | PyTorch / moend |")
print("|---|---|---|---|")
for n in sorted({r["tokens"] for r in rows}):
    m, t = by[("moend", n)], by[("pytorch", n)]
    print(f"| {n} | {m:.3f} | {t:.3f} | {t / m:.2f}x |")
PY
rm -f "$out"

#!/usr/bin/env bash
# Reruns the whole quality study of docs/QUALITY_RESEARCH.md (about 1-1.5 h on 2 cores).
# Stage outputs: /tmp/mr (prefill caches), data/research/tables, data/research/results.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
PY="nice -n 10 /usr/bin/python3"
$PY scripts/research/check_golden.py                                   # numpy forward vs data/golden
$PY scripts/research/make_recall_set.py 40 20261207 data/research/dev_recall.jsonl     # dev (selection) set
$PY scripts/research/make_recall_set.py 8 777 data/research/calib_recall.jsonl         # recall calibration set
$PY scripts/research/prefill_cache.py dev data/research/dev_recall.jsonl /tmp/mr/dev
$PY scripts/research/prefill_cache.py calib 4 /tmp/mr/cal
$PY scripts/research/prefill_cache.py recallcal data/research/calib_recall.jsonl /tmp/mr/rcal
# code-probe tables (data/calibration.bin, c = 3840, 2 sequences, every 2nd probe)
C="$PY scripts/research/calib.py --nseq 2"
$C
$C --G 128 --Gc 64 --bits 2,3,4,8,16 --ebs 0,2
$C --rot 1 --bits 2,3,4,8,16 --ebs 0,2
$C --w 8 --bits 2,3,4,8,16 --ebs 0,2
$C --score h2o --bits 2,4,8,16 --ebs 0
$C --w 16 --bits 2,4,8,16 --ebs 0
# recall-probe tables (own recall prompts, probes = question + answer tokens)
RC="$PY scripts/research/calib.py --cal /tmp/mr/rcal --nseq 8 --pstride 1 --bits 2,3,4,8,16 --ebs 0,2"
$RC --G 128 --Gc 64 --out data/research/tables/recall_G128_Gc64_rot0_w32_snap.json
$RC --out data/research/tables/recall_G32_Gc32_rot0_w32_snap.json
$PY scripts/research/calib.py --cal /tmp/mr/rcal --nseq 8 --pstride 1 --bits 2,4,8,16 --ebs 0 --w 8 --out data/research/tables/recall_G32_Gc32_rot0_w8_snap.json
# dev-set retrieval at ratios 8, 14, 20
A="$PY scripts/research/run_ablation.py"
$A --full --methods baseline,layer_std,perhead,bits13,g128_all
$A --methods recall_g128,recallonly_g128,perhead_recall_g128,rot_all,w8_all
$A --methods recall_committed_std,recall_g32_std,recall_g32,perhead_recall_g32_std,recall_g128_std
$A --methods recall3_g128,perhead_recall3_g128,h2o,w16
$A --methods perhead_recall_g32
$A --methods perhead_recall_w8_std
# held-out bits per byte (2 windows) at 14x
$PY scripts/research/bpb.py --windows 2 --methods full,baseline@14,recall_g128@14,perhead_recall_g128@14,recall_g32_std@14
$PY scripts/research/bpb.py --windows 2 --tag _b --methods full,perhead_recall_g32_std@14,perhead_recall_g32@14,perhead_recall_g32_std@20
# final candidates, once, on the public test set
$PY scripts/research/prefill_cache.py dev data/retrieval.jsonl /tmp/mr/public
$A --public --full --methods baseline,perhead_recall_g32_std,perhead_recall_g128,recall_g128
$PY scripts/research/report.py

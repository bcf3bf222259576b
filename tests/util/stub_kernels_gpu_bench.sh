#!/bin/bash
# A stand-in for kernels_gpu_bench in the dry runs of the GPU lease's scripts
# (tests/kernels/device_run_dry_test.sh, tests/worker/device_session_dry_test.sh):
# copied into BUILD/bin, it prints the RESULT lines bench/kernels/device_run.sh
# parses. A build folder ending in -variant takes 50 + splits us and picks 12
# splits for --splits 0; any other 70 + splits us and 33. With
# MOEND_DRY_CALLS set, it logs its build folder and arguments there.
dir=$(cd "$(dirname "$0")/.." && pwd)
[ -n "${MOEND_DRY_CALLS:-}" ] && echo "kernels_gpu_bench $dir $*" >> "$MOEND_DRY_CALLS"
auto=33 us=70
[[ "$dir" == *-variant ]] && auto=12 us=50
echo 'RESULT device name="stub" sms=132 copy_tbps=3.000'
splits=0 ctxs=65536
while [ $# -gt 0 ]; do case $1 in --splits) splits=$2 ;; --ctx) ctxs=$2 ;; esac; shift; done
for c in ${ctxs//,/ }; do for s in ${splits//,/ }; do
  u=$s; [ "$s" = 0 ] && u=$auto
  echo "RESULT decode batch=8 ctx=$c tuple=(0.25,2,2) us=$((us + u)).0 bytes=1 tbps=1.500 splits=$u asked=$s"
done; done

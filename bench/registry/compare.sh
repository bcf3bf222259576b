#!/usr/bin/env bash
# Side by side: registry ingest of two builds (e.g. main's and this tree's),
# in one run, alternating so that both see the same machine load.
#
#   bench/registry/compare.sh BEFORE_BENCH AFTER_BENCH [REPORTS] [ROUNDS]
#
# For each round and client count (1, 4, 16), runs
# `registry_ingest_bench --reports REPORTS --threads N` of BEFORE then AFTER
# (sync on: every acknowledged report is fsynced) and prints the gRPC lines;
# then the median reports/s of each per client count and the ratio.
set -euo pipefail
before=$1 after=$2 reports=${3:-1000} rounds=${4:-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for round in $(seq "$rounds"); do
  for clients in 1 4 16; do
    for side in before after; do
      bin=$before; [[ $side == after ]] && bin=$after
      line=$("$bin" --reports "$reports" --threads "$clients" --db "$out/db" | grep '^grpc')
      echo "round $round $side: $line"
      echo "$line" | sed -E 's/.* ([0-9]+) reports\/s.*/\1/' >> "$out/$side-$clients"
    done
  done
done
median() { sort -n "$1" | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo "clients  before reports/s  after reports/s  after/before"
for clients in 1 4 16; do
  b=$(median "$out/before-$clients") a=$(median "$out/after-$clients")
  awk -v c="$clients" -v b="$b" -v a="$a" 'BEGIN {printf "%7d  %16d  %15d  %12.2f\n", c, b, a, a / b}'
done

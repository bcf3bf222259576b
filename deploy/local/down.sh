#!/usr/bin/env bash
# Stops the local stack (SIGTERM, then SIGKILL after 10 s). State stays in
# out/local (the registry's RocksDB keeps the calibration for the next up.sh).
set -uo pipefail
source "$(dirname "$0")/common.sh"
for c in node worker router prometheus registry; do
  p=$(pid_of "$c")
  [[ -n $p ]] || continue
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null && echo "$c: killed"
    echo "$c: stopped"
  fi
  rm -f "$STATE/pids/$c.pid"
done

#!/usr/bin/env bash
# The one-machine moend stack on loopback: installs what is missing, builds,
# starts a registry (RocksDB in out/local/registry-db), a router, a worker, a
# reference inference node and Prometheus; calibrates the shipped model on the
# fleet (a second run reuses the stored calibration), asks the router for plans
# at ratios 4, 8 and 14, prints them and their quality, and generates text on
# the node. The stack keeps running: deploy/local/status.sh, deploy/local/down.sh.
#
# Environment: MOEND_LOCAL_DIR (state and logs, default out/local),
# MOEND_CAL_SAMPLES (calibration sequences, default 4 of the 16),
# MOEND_EVAL_PROMPTS (retrieval prompts in the quality table, default 8),
# MOEND_PROMETHEUS_PORT (default 9090), MOEND_SKIP_INSTALL=1, MOEND_SKIP_BUILD=1.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$MOEND_ROOT"
samples=${MOEND_CAL_SAMPLES:-4}
prompts=${MOEND_EVAL_PROMPTS:-8}

[[ ${MOEND_SKIP_INSTALL:-0} == 1 ]] || bash scripts/install_deps.sh
# The fuzzers (sanitizer builds) are for the test command only.
[[ ${MOEND_SKIP_BUILD:-0} == 1 ]] || bash scripts/build.sh -DMOEND_FUZZ=OFF
bash deploy/local/down.sh >/dev/null 2>&1 || true
mkdir -p "$STATE/logs" "$STATE/pids"

start() {  # start NAME COMMAND...: in its own session, output to logs/NAME.log
  local name=$1
  shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/pids/$name.pid"
}
wait_for() {  # wait_for NAME MARKER: until the log shows MARKER (60 s)
  for _ in $(seq 600); do
    grep -q "$2" "$STATE/logs/$1.log" 2>/dev/null && return 0
    alive "$1" || { echo "moend: $1 exited:" >&2; tail -5 "$STATE/logs/$1.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "moend: $1 did not start within 60 s; see $STATE/logs/$1.log" >&2
  exit 1
}
for c in "${COMPONENTS[@]}"; do
  port=${METRICS[$c]##*:}
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "moend: port $port (for $c) is already in use; stop what holds it or set MOEND_PROMETHEUS_PORT" >&2
    exit 1
  fi
done

echo "== forward pass of the shipped model (CPU)"
"$BIN/moendctl" predict --model models/tinycode --input data/heldout_code.bin --tokens 1024 --show 4

echo "== starting the stack (logs in $STATE/logs)"
start registry "$BIN/moend-registry" --db "$STATE/registry-db" --listen "$REGISTRY" \
  --metrics "${METRICS[registry]}"
wait_for registry "listening on"
start router "$BIN/moend-router" --registry "$REGISTRY" --listen "$ROUTER" --metrics "${METRICS[router]}"
wait_for router "listening on"
start worker "$BIN/moend-worker" --registry "$REGISTRY" --id local-worker-0 --models models \
  --data-dir . --metrics "${METRICS[worker]}"
wait_for worker "serving registry"
# Passive OpenMP waits: the node's decode steps share 2 cores with the rest
# of the stack (docs/KNOWN_ISSUES.md). One request in 4 is shadowed by the full
# cache for its first 16 tokens (moend_node_shadow_*).
start node env OMP_WAIT_POLICY=passive "$BIN/moend-node" --model models/tinycode --listen "$NODE" \
  --router "$ROUTER" --ratio 8 --solver exact --metrics "${METRICS[node]}" \
  --kv-pool-bytes $((256 << 20)) --shadow-rate 0.25
wait_for node "listening on"
start prometheus prometheus --config.file=deploy/prometheus/prometheus.yml \
  --storage.tsdb.path="$STATE/prometheus" --web.listen-address="$PROMETHEUS"
wait_for prometheus "Server is ready to receive web requests"

echo "== calibrating tinycode on the fleet ($samples sequences of 4096 bytes)"
"$BIN/moendctl" calibrate --registry "$REGISTRY" --model models/tinycode \
  --data data/calibration.bin --seq-len 4096 --samples "$samples" --samples-per-shard 1 \
  --layers-per-shard 4 --out "$STATE/table.json" --reuse

plans=full
for ratio in 4 8 14; do
  echo "== plan at ratio $ratio (exact solver, from the router)"
  "$BIN/moendctl" plan --router "$ROUTER" --model tinycode --ratio "$ratio" --solver exact \
    --out "$STATE/plan_r$ratio.json"
  plans="$plans,$STATE/plan_r$ratio.json"
done

echo "== quality with real compression ($prompts retrieval prompts, 1 held-out window; the full table: scripts/quality_table.sh)"
"$BIN/moendctl" eval --model models/tinycode --plan "$plans" --retrieval data/retrieval.jsonl \
  --heldout data/heldout_code.bin --limit "$prompts" --bpb-windows 1 --out-dir "$STATE/eval"

echo "== generating on the node (compressed cache, plan from the router)"
head -c 2000 data/heldout_code.bin >"$STATE/prompt.txt"
"$BIN/moendctl" generate --node "$NODE" --input "$STATE/prompt.txt" --max-new-tokens 48

cat <<MSG
== moend is up
  registry  $REGISTRY   metrics http://${METRICS[registry]}/metrics
  router    $ROUTER   metrics http://${METRICS[router]}/metrics
  worker              metrics http://${METRICS[worker]}/metrics
  node      $NODE   metrics http://${METRICS[node]}/metrics
  prometheus http://$PROMETHEUS  (deploy/grafana has the dashboard)
  logs: $STATE/logs    status: deploy/local/status.sh    stop: deploy/local/down.sh
MSG

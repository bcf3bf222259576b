# Shared by the bench/node scripts (sourced from the repository root): a work
# folder removed at exit, and a real moend-node of the shipped model started
# and stopped. start_node sets node_pid, addr (gRPC) and metrics (host:port).
bin=build/bin
work=$(mktemp -d)
node_pid=
cleanup() {
  if [[ -n $node_pid ]]; then kill "$node_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_node() {  # extra node flags...
  OMP_WAIT_POLICY=passive $bin/moend-node --model models/tinycode --listen 127.0.0.1:0 --metrics 127.0.0.1:0 "$@" \
    > "$work/node.log" 2>&1 &
  node_pid=$!
  for _ in $(seq 1 300); do
    grep -q "listening on" "$work/node.log" 2>/dev/null && break
    sleep 0.1
  done
  addr=$(sed -n 's/.*listening on \(.*\)$/\1/p' "$work/node.log" | head -1)
  metrics=$(sed -n 's#.*metrics on http://\([^/]*\)/metrics.*#\1#p' "$work/node.log" | head -1)
  [[ -n $addr ]] || { cat "$work/node.log"; exit 1; }
}
stop_node() { kill "$node_pid"; wait "$node_pid" 2>/dev/null || true; node_pid=; }

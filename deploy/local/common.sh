# Shared settings of the local stack scripts (sourced, not run).
# Ports match deploy/prometheus/prometheus.yml.
MOEND_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${MOEND_LOCAL_DIR:-$MOEND_ROOT/out/local}
BIN=${MOEND_BIN:-$MOEND_ROOT/build/bin}  # MOEND_BIN: another build's bin folder
REGISTRY=127.0.0.1:7001
ROUTER=127.0.0.1:7002
NODE=127.0.0.1:7003
PROMETHEUS=127.0.0.1:${MOEND_PROMETHEUS_PORT:-9090}
COMPONENTS=(registry router worker node prometheus)
declare -A METRICS=([registry]=127.0.0.1:9101 [router]=127.0.0.1:9102 [worker]=127.0.0.1:9103
                    [node]=127.0.0.1:9104 [prometheus]=$PROMETHEUS)

pid_of() { cat "$STATE/pids/$1.pid" 2>/dev/null || true; }
alive() { local p; p=$(pid_of "$1"); [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }

# http_ok HOST:PORT PATH: true when an HTTP GET answers 200.
http_ok() {
  local host=${1%:*} port=${1##*:}
  exec 3<>"/dev/tcp/$host/$port" 2>/dev/null || return 1
  printf 'GET %s HTTP/1.0\r\n\r\n' "$2" >&3
  local status
  read -r -t 5 status <&3 || true
  exec 3<&-
  [[ $status == *" 200"* ]]
}

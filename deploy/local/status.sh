#!/usr/bin/env bash
# One line per component of the local stack: process, metrics endpoint.
set -uo pipefail
source "$(dirname "$0")/common.sh"
printf '%-11s %-8s %-8s %s\n' component process metrics endpoint
down=0
for c in "${COMPONENTS[@]}"; do
  if alive "$c"; then proc="up($(pid_of "$c"))"; else proc=down; down=1; fi
  path=/metrics
  [[ $c == prometheus ]] && path=/-/ready
  if http_ok "${METRICS[$c]}" "$path"; then m=ok; else m=no; down=1; fi
  printf '%-11s %-8s %-8s http://%s%s\n' "$c" "$proc" "$m" "${METRICS[$c]}" "$path"
done
exit $down

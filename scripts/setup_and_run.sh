#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, then run the
# shipped model's forward pass on held-out code and print its next-byte
# predictions and speed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
build/bin/moendctl predict --model models/tinycode --input data/heldout_code.bin --tokens 4096

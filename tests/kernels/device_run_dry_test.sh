#!/usr/bin/env bash
# bench/kernels/device_run.sh is the one call a short GPU lease makes; a
# broken script wastes that lease. This runs it on this machine with a stubbed
# toolchain (cmake, ninja, nvidia-smi, ncu, and builds whose "binaries" print
# fixed RESULT lines, the variant picking other splits for --splits 0) and
# checks the flow and the base-vs-variant table: both builds, both test runs,
# rows keyed on the split count asked for, the speedups, and ncu's arguments.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
export MOEND_DRY_STUBS=$src/tests/util
cat > "$tmp/bin/cmake" <<'STUB'
#!/bin/bash
while [ $# -gt 0 ]; do [ "$1" = "-B" ] && mkdir -p "$2"; shift; done
STUB
cat > "$tmp/bin/ninja" <<'STUB'
#!/bin/bash
dir=$2
mkdir -p "$dir/bin" "$dir/tests"
cp "$MOEND_DRY_STUBS/stub_kernels_gpu_bench.sh" "$dir/bin/kernels_gpu_bench"
cat > "$dir/tests/kernels_test" <<'TESTS'
#!/bin/bash
if [ -n "${MOEND_STUB_SKIP:-}" ]; then  # a machine where every CUDA test skips
  printf 'x.cc:40: Skipped\nno CUDA device: stub\n[  SKIPPED ] CudaTest.A (0 ms)\n'
  printf '[  PASSED  ] 0 tests.\n[  SKIPPED ] 7 tests, listed below:\n'
else
  echo "[  PASSED  ] 7 tests."
fi
TESTS
chmod +x "$dir/bin/kernels_gpu_bench" "$dir/tests/kernels_test"
STUB
printf '#!/bin/bash\necho "name, driver_version"\necho "stub GPU, 0"\n' > "$tmp/bin/nvidia-smi"
printf '#!/bin/bash\necho "ncu $*"\n' > "$tmp/bin/ncu"
printf '#!/bin/bash\nexit 1\n' > "$tmp/bin/python3"  # no torch here: the SDPA table is skipped
chmod +x "$tmp/bin/"*
out=$(cd "$src" && PATH="$tmp/bin:$PATH" OUT="$tmp/out" MOEND_GPU_BUILD="$tmp/build" \
  MOEND_VARIANT_FLAGS="-DMOEND_ATTENTION_WAVES=1" MOEND_SPLITS=0,12 MOEND_NCU=1 \
  bash bench/kernels/device_run.sh --quick --kernels-only 2>&1)
fail() { echo "FAIL: $1"; echo "$out"; exit 1; }
grep -q "build ok" <<<"$out" || fail "no base build"
grep -q "variant build ok" <<<"$out" || fail "no variant build"
grep -q "variant CudaTest: PASS" <<<"$out" || fail "variant tests not run"
# asked 0: base 33 splits (103 us) vs variant 12 (62 us); asked 12: 82 vs 62.
grep -Eq "ctx=65536 tuple=\(0.25,2,2\) asked=0 +33 +103.0 +12 +62.0 +1.66x" <<<"$out" || fail "asked=0 row"
grep -Eq "ctx=131072 tuple=\(0.25,2,2\) asked=12 +12 +82.0 +12 +62.0 +1.32x" <<<"$out" || fail "asked=12 row"
grep -q "missing" <<<"$out" && fail "a variant row is missing"
grep -q "regex:AttentionKernel|Combine --launch-skip 6 --launch-count 2" "$tmp/out/ncu_variant.txt" ||
  fail "ncu not run on the variant with the decode kernels' filter"
# Every CUDA test skipped: the script must not call that a pass.
skip_out=$(cd "$src" && PATH="$tmp/bin:$PATH" OUT="$tmp/out-skip" MOEND_GPU_BUILD="$tmp/build-skip" \
  MOEND_VARIANT_FLAGS="-DMOEND_ATTENTION_WAVES=1" MOEND_SPLITS=0 MOEND_STUB_SKIP=1 \
  bash bench/kernels/device_run.sh --quick --kernels-only 2>&1)
out=$skip_out
grep -q "CudaTest: PASS" <<<"$out" && fail "PASS printed although every CUDA test skipped"
grep -q "^CudaTest: NOT RUN (7 skipped: no CUDA device: stub)" <<<"$out" || fail "no NOT RUN verdict"
grep -q "^variant CudaTest: NOT RUN" <<<"$out" || fail "no NOT RUN verdict for the variant"
echo "device_run.sh dry run: 2 passed, 0 failed"

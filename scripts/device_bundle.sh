#!/usr/bin/env bash
# Packs the header and library dependencies of the core-only build (Abseil,
# GoogleTest, nlohmann-json) from this machine's Debian packages into
# .devdeps/usr, for GPU machines that have nvcc and cmake but none of these.
# There: cmake -S . -B build-dev -G Ninja -DMOEND_CORE_ONLY=ON \
#          -DCMAKE_PREFIX_PATH=$PWD/.devdeps/usr
set -euo pipefail
cd "$(dirname "$0")/.."
out=.devdeps/usr
lib=/usr/lib/x86_64-linux-gnu
rm -rf .devdeps
mkdir -p "$out/include" "$out/lib/x86_64-linux-gnu/cmake" "$out/share/cmake"
cp -r /usr/include/absl /usr/include/gtest /usr/include/gmock /usr/include/nlohmann "$out/include/"
cp -a "$lib"/libabsl_*.so* "$lib"/libgtest*.a "$lib"/libgmock*.a "$out/lib/x86_64-linux-gnu/"
cp -r "$lib/cmake/absl" "$lib/cmake/GTest" "$out/lib/x86_64-linux-gnu/cmake/"
cp -r /usr/share/cmake/nlohmann_json "$out/share/cmake/"
grep -qx '/.devdeps/' .git/info/exclude 2>/dev/null || echo '/.devdeps/' >> .git/info/exclude
du -sh .devdeps

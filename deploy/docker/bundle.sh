#!/usr/bin/env bash
# bundle.sh BINARY DEST [EXCLUDE_GLOB...]
#
# Copies BINARY to DEST/bin and every shared library it loads (ldd) to
# DEST/lib, except the C library's own (libc, libm, ld-linux, ...), the GPU
# driver's (libcuda, libnvidia-*) and any EXCLUDE_GLOB (e.g. 'libcudart.so*'
# when the runtime image provides CUDA). The runtime stage of each Dockerfile
# copies DEST and sets LD_LIBRARY_PATH=DEST/lib, so it needs no -dev packages
# and can differ from the Debian 12 build stage as long as its glibc is at
# least Debian 12's (2.36).
set -euo pipefail
if (($# < 2)); then
  echo "usage: $0 BINARY DEST [EXCLUDE_GLOB...]" >&2
  exit 2
fi
bin=$1
dest=$2
shift 2
if [[ ! -x $bin ]]; then
  echo "bundle.sh: $bin is not an executable file" >&2
  exit 1
fi
deps=$(ldd "$bin")
if grep -q "not found" <<<"$deps"; then
  echo "bundle.sh: $bin has unresolved libraries:" >&2
  grep "not found" <<<"$deps" >&2
  exit 1
fi
mkdir -p "$dest/bin" "$dest/lib"
cp "$bin" "$dest/bin/"
count=0
while read -r lib; do
  base=$(basename "$lib")
  case "$base" in
    ld-linux*|libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|libutil.so*) continue ;;
    libcuda.so*|libnvidia-*) continue ;;
  esac
  for pattern in "$@"; do
    # shellcheck disable=SC2053  # the pattern is a glob on purpose
    [[ $base == $pattern ]] && continue 2
  done
  cp -L "$lib" "$dest/lib/$base"
  count=$((count + 1))
done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3}' <<<"$deps")
echo "bundle.sh: $(basename "$bin") + $count libraries in $dest"

#!/usr/bin/env bash
# Installs OpenBLAS from the PyPI wheel scipy-openblas32 (pinned; a self-contained shared
# library, no Fortran runtime needed) into mrl's cache and prints the library's path, for
#   export MRL_OPENBLAS=$(scripts/openblas.sh)
# after which mrl's dense layers run on OpenBLAS's sgemm (encoder/src/blas.rs).
set -euo pipefail
wheel="scipy-openblas32==0.3.34.481.3"
# The cache mrl's model fetcher uses (encoder/src/fetch.rs default_cache_dir).
cache="${MRL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mrl}"
lib="$cache/openblas/scipy_openblas32/lib/libscipy_openblas.so"
if [ ! -f "$lib" ]; then
  "${MRL_PYTHON:-python3}" -m pip install -q --no-deps --only-binary=:all: \
    --target "$cache/openblas" "$wheel" >&2
fi
echo "$lib"

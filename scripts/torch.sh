#!/usr/bin/env bash
# Installs PyTorch (pinned, CPU use only) from PyPI into a virtualenv in mrl's cache and prints
# the venv's python, for `mrl bench train`'s side-by-side measurement:
#   mrl bench train --torch "$(scripts/torch.sh)"
# The tests never need it.
set -euo pipefail
version="torch==2.9.1"
# The cache mrl's model fetcher uses (encoder/src/fetch.rs default_cache_dir).
cache="${MRL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mrl}"
venv="$cache/torch-venv"
if ! "$venv/bin/python" -c "import torch, safetensors.torch" >/dev/null 2>&1; then
  "${MRL_PYTHON:-python3}" -m venv "$venv" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q "$version" "safetensors==0.6.2" numpy packaging >&2
fi
echo "$venv/bin/python"

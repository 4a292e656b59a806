#!/usr/bin/env bash
# Installs sentence-transformers and PyTorch (pinned, used on the CPU) from PyPI into a
# virtualenv in mrl's cache and prints the venv's python, for the reference fixtures:
#   "$(scripts/st.sh)" scripts/st_fixtures.py
# The tests never need it: they read the committed fixtures. torch's Linux wheel pulls the
# CUDA libraries (about 3 GB) even for CPU use.
set -euo pipefail
pins=("torch==2.9.1" "sentence-transformers==6.2.0" "transformers==5.25.0" "onnx==1.19.1" "onnxruntime==1.23.2")
cache="${MRL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mrl}"
venv="$cache/st-venv"
if ! "$venv/bin/python" -c "import torch, sentence_transformers, onnx, onnxruntime" >/dev/null 2>&1; then
  "${MRL_PYTHON:-python3}" -m venv "$venv" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q "${pins[@]}" >&2
fi
echo "$venv/bin/python"

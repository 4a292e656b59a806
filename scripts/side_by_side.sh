#!/usr/bin/env bash
# Speed against ONNX Runtime, measured the only fair way on a machine whose speed drifts:
# alternate the engines ROUNDS times in one session and report per-round ratios and their
# median. Each run is the median of RUNS passes (default 3) over ../shared/bench/texts.jsonl,
# batch 32, 2 threads. Engines per round: ONNX Runtime, mrl on its built-in gemm, and mrl on
# OpenBLAS when $MRL_OPENBLAS is set (export MRL_OPENBLAS=$(scripts/openblas.sh)).
# Usage: scripts/side_by_side.sh [ROUNDS]; needs onnxruntime, tokenizers and numpy
# (python3 -m pip install onnxruntime tokenizers numpy); MRL_BIN picks the mrl binary.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
runs=${RUNS:-3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mrl-target}"
mrl="${MRL_BIN:-$CARGO_TARGET_DIR/release/mrl}"
[ -x "$mrl" ] || cargo build --release --bin mrl
model=models/all-MiniLM-L6-v2
[ -d "$model" ] || "$mrl" model fetch >/dev/null
shared=${MRL_SHARED_DIR:-../shared}
openblas=${MRL_OPENBLAS:-}
# Only RESULT lines: mrl also prints RATIO lines that name the kind.
rate() { grep "^RESULT.* kind=$1 " | head -n1 | sed -E 's/.*median_texts_per_s=([0-9.]+).*/\1/'; }
rates() { local out; out=$("$@" 2>/dev/null); echo "$(echo "$out" | rate short) $(echo "$out" | rate long)"; }
results=$(mktemp)
for r in $(seq "$rounds"); do
  ort=$(rates python3 "$shared/peers/bench_ort.py" --model "$model" --threads 2 --runs "$runs")
  gemm=$(rates env -u MRL_OPENBLAS "$mrl" bench encode --model "$model" --runs "$runs")
  blas="0 0"
  [ -z "$openblas" ] || blas=$(rates env MRL_OPENBLAS="$openblas" "$mrl" bench encode --model "$model" --runs "$runs")
  # Fields: round, ORT short, ORT long, gemm short, gemm long, OpenBLAS short, OpenBLAS long.
  line="$r $ort $gemm $blas"
  echo "$line" >>"$results"
  echo "$line" | awk '{printf "round %d (texts/s, short / long): ORT %.1f / %.1f; mrl %.1f / %.1f (ratio %.3f / %.3f)", $1, $2, $3, $4, $5, $4/$2, $5/$3;
    if ($6 > 0) printf "; mrl+OpenBLAS %.1f / %.1f (ratio %.3f / %.3f)", $6, $7, $6/$2, $7/$3; printf "\n"}'
done
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
col() { awk -v a="$1" -v b="$2" '{printf "%.4f\n", $a/$b}' "$results" | median; }
echo "median ratio to ORT over $rounds rounds: mrl short $(col 4 2), long $(col 5 3)"
[ -z "$openblas" ] || echo "median ratio to ORT over $rounds rounds: mrl+OpenBLAS short $(col 6 2), long $(col 7 3)"
rm -f "$results"

#!/usr/bin/env bash
# Speed against ONNX Runtime, measured the only fair way on a machine whose speed drifts:
# alternate the two engines ROUNDS times in one session (each run is itself the median of 3
# passes over ../shared/bench/texts.jsonl, batch 32, 2 threads) and report per-round ratios
# and their median. Usage: scripts/side_by_side.sh [ROUNDS] (needs onnxruntime, tokenizers,
# numpy: python3 -m pip install onnxruntime tokenizers numpy). MRL_BIN picks the mrl binary
# (e.g. one built with --features blas, run with MRL_OPENBLAS set).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
# Passes per engine per round (each engine reports its median pass).
runs=${RUNS:-3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mrl-target}"
mrl="${MRL_BIN:-$CARGO_TARGET_DIR/release/mrl}"
[ -x "$mrl" ] || cargo build --release --bin mrl
model=models/all-MiniLM-L6-v2
[ -d "$model" ] || "$mrl" model fetch >/dev/null
shared=${MRL_SHARED_DIR:-../shared}
# Only RESULT lines: mrl also prints RATIO lines that name the kind.
rate() { grep "^RESULT.* kind=$1 " | head -n1 | sed -E 's/.*median_texts_per_s=([0-9.]+).*/\1/'; }
results=$(mktemp)
for r in $(seq "$rounds"); do
  ort=$(python3 "$shared/peers/bench_ort.py" --model "$model" --threads 2 --runs "$runs" 2>/dev/null)
  ours=$("$mrl" bench encode --model "$model" --runs "$runs" 2>/dev/null)
  line="$r $(echo "$ort" | rate short) $(echo "$ours" | rate short) $(echo "$ort" | rate long) $(echo "$ours" | rate long)"
  echo "$line" >>"$results"
  echo "$line" | awk '{printf "round %d: ORT %.1f / %.1f, mrl %.1f / %.1f texts/s (short / long), ratio %.3f / %.3f\n", $1, $2, $4, $3, $5, $3/$2, $5/$4}'
done
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
short=$(awk '{printf "%.4f\n", $3/$2}' "$results" | median)
long=$(awk '{printf "%.4f\n", $5/$4}' "$results" | median)
echo "median ratio (mrl / ORT) over $rounds rounds: short $short, long $long"
rm -f "$results"

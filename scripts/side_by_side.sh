#!/usr/bin/env bash
# Speed against ONNX Runtime, measured the only fair way on a machine whose speed drifts:
# alternate the engines ROUNDS times in one session and report per-round ratios and their
# median. Each run is the median of RUNS passes (default 3) over ../shared/bench/texts.jsonl,
# batch 32, 2 threads, base model (all-MiniLM-L6-v2). Engines per round: ONNX Runtime fp32,
# ONNX Runtime int8 (its dynamic quantization of the same export: int8 weights per channel,
# int8 activations; made once into models/ort/), mrl f32 on its built-in gemm, mrl int8, and
# mrl f32 on OpenBLAS when $MRL_OPENBLAS is set (export MRL_OPENBLAS=$(scripts/openblas.sh)).
# Usage: scripts/side_by_side.sh [ROUNDS]; needs onnxruntime, onnx, tokenizers and numpy
# (python3 -m pip install onnxruntime onnx tokenizers numpy); MRL_BIN picks the mrl binary.
# Another model: MODEL=models/all-mpnet-base-v2 ONNX=models/ort/all-mpnet-base-v2.onnx
# (from scripts/onnx_export.py), measured by scripts/ort_bench.py, which takes any export.
# TEXTS=FILE measures on other texts (same format: {"kind", "text"} lines); PER_KIND=N on the
# first N texts of each kind.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
runs=${RUNS:-3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mrl-target}"
mrl="${MRL_BIN:-$CARGO_TARGET_DIR/release/mrl}"
[ -x "$mrl" ] || cargo build --release --bin mrl
model=${MODEL:-models/all-MiniLM-L6-v2}
[ -d "$model" ] || "$mrl" model fetch "$(basename "$model")" >/dev/null
shared=${MRL_SHARED_DIR:-../shared}
texts=${TEXTS:-$shared/bench/texts.jsonl}
if [ -n "${PER_KIND:-}" ]; then
  # The first PER_KIND texts of each kind: a 12-layer model on all 2,000 takes long.
  cut=$(mktemp --suffix=.jsonl)
  python3 - "$texts" "$PER_KIND" >"$cut" <<'PY'
import json, sys
seen = {}
for line in open(sys.argv[1]):
    kind = json.loads(line)["kind"]
    seen[kind] = seen.get(kind, 0) + 1
    if seen[kind] <= int(sys.argv[2]):
        sys.stdout.write(line)
PY
  texts=$cut
fi
openblas=${MRL_OPENBLAS:-}
onnx=${ONNX:-$shared/peers/minilm-l6-v2.onnx}
ort_bench=$shared/peers/bench_ort.py
[ -z "${ONNX:-}" ] || ort_bench=scripts/ort_bench.py
ort_int8=models/ort/$(basename "$onnx" .onnx).int8.onnx
if [ ! -f "$ort_int8" ]; then
  mkdir -p models/ort
  python3 - "$onnx" "$ort_int8" <<'PY'
import sys
from onnxruntime.quantization import QuantType, quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8, per_channel=True)
PY
fi
# Only RESULT lines: mrl also prints RATIO lines that name the kind.
rate() { grep "^RESULT.* kind=$1 " | head -n1 | sed -E 's/.*median_texts_per_s=([0-9.]+).*/\1/'; }
rates() { local out; out=$("$@" 2>/dev/null); echo "$(echo "$out" | rate short) $(echo "$out" | rate long)"; }
results=$(mktemp)
for r in $(seq "$rounds"); do
  ort=$(rates python3 "$ort_bench" --model "$model" --onnx "$onnx" --threads 2 --runs "$runs" --texts "$texts")
  ort8=$(rates python3 "$ort_bench" --model "$model" --onnx "$ort_int8" --threads 2 --runs "$runs" --texts "$texts")
  f32=$(rates env -u MRL_OPENBLAS "$mrl" bench encode --model "$model" --runs "$runs" --texts "$texts")
  int8=$(rates env -u MRL_OPENBLAS "$mrl" bench encode --model "$model" --precision int8 --runs "$runs" --texts "$texts")
  blas="0 0"
  [ -z "$openblas" ] || blas=$(rates env MRL_OPENBLAS="$openblas" "$mrl" bench encode --model "$model" --runs "$runs" --texts "$texts")
  # Fields: round, then short and long texts/s of ORT fp32, ORT int8, mrl f32, mrl int8,
  # mrl f32 on OpenBLAS.
  line="$r $ort $ort8 $f32 $int8 $blas"
  echo "$line" >>"$results"
  echo "$line" | awk '{printf "round %d (texts/s, short / long): ORT fp32 %.1f / %.1f; ORT int8 %.1f / %.1f; mrl f32 %.1f / %.1f; mrl int8 %.1f / %.1f", $1, $2, $3, $4, $5, $6, $7, $8, $9;
    if ($10 > 0) printf "; mrl+OpenBLAS %.1f / %.1f", $10, $11; printf "\n"}'
done
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
col() { awk -v a="$1" -v b="$2" '{printf "%.4f\n", $a/$b}' "$results" | median; }
echo "median ratios over $rounds rounds (short, long):"
echo "  ORT int8 / ORT fp32:  $(col 4 2), $(col 5 3)"
echo "  mrl f32 / ORT fp32:   $(col 6 2), $(col 7 3)"
echo "  mrl int8 / ORT fp32:  $(col 8 2), $(col 9 3)"
echo "  mrl int8 / ORT int8:  $(col 8 4), $(col 9 5)"
echo "  mrl int8 / mrl f32:   $(col 8 6), $(col 9 7)"
[ -z "$openblas" ] || echo "  mrl+OpenBLAS / ORT fp32: $(col 10 2), $(col 11 3)"
rm -f "$results"

#!/usr/bin/env python3
"""ONNX Runtime on any sentence-transformers folder's export (`scripts/onnx_export.py`), with
the sentence-transformers pipeline (truncation at `max_seq_length`, padding to the longest
text of each batch with the model's own pad id, mean pooling, L2 normalisation), printing the
same RESULT lines as ../shared/peers/bench_ort.py (which is fixed to all-MiniLM-L6-v2's
inputs and width):

    python3 scripts/ort_bench.py --model models/all-mpnet-base-v2 \\
        --onnx models/ort/all-mpnet-base-v2.onnx --threads 2

Needs onnxruntime, tokenizers and numpy.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--model", required=True)
ap.add_argument("--onnx", required=True)
ap.add_argument("--texts", default=os.path.join(ROOT, "..", "shared", "bench", "texts.jsonl"))
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--kinds", default="short,long")
a = ap.parse_args()

tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
max_len = json.load(open(os.path.join(a.model, "sentence_bert_config.json")))["max_seq_length"]
config = json.load(open(os.path.join(a.model, "config.json")))
pad_id = config.get("pad_token_id") or 0
tok.enable_truncation(max_length=max_len)
tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id))

so = ort.SessionOptions()
so.intra_op_num_threads = a.threads
so.inter_op_num_threads = 1
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
inputs = {i.name for i in sess.get_inputs()}
width = config["hidden_size"]
print(f"# ort={ort.__version__} onnx={os.path.basename(a.onnx)} inputs={sorted(inputs)} "
      f"intra_op_threads={a.threads}", file=sys.stderr)


def embed_batch(texts):
    enc = tok.encode_batch(texts)
    feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}
    if "token_type_ids" in inputs:
        feed["token_type_ids"] = np.array([e.type_ids for e in enc], dtype=np.int64)
    h = sess.run(None, feed)[0]
    m = feed["attention_mask"][..., None].astype(np.float32)
    mean = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return mean / np.clip(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12, None)


def encode(texts, batch):
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.empty((len(texts), width), dtype=np.float32)
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        out[idx] = embed_batch([texts[i] for i in idx])
    return out


rows = [json.loads(line) for line in open(a.texts)]
tag = os.path.basename(a.onnx).replace(".onnx", "")
for kind in a.kinds.split(","):  # warm-up
    encode([r["text"] for r in rows if r["kind"] == kind][: a.batch], a.batch)
for kind in a.kinds.split(","):
    t = [r["text"] for r in rows if r["kind"] == kind]
    rates = []
    for i in range(a.runs):
        s = time.perf_counter()
        encode(t, a.batch)
        dt = time.perf_counter() - s
        rates.append(len(t) / dt)
        print(f"  {kind} run {i}: {dt:.2f}s {len(t)/dt:.1f} texts/s", file=sys.stderr)
    print(f"RESULT engine=ort:{tag} kind={kind} n={len(t)} batch={a.batch} threads={a.threads} "
          f"median_texts_per_s={statistics.median(rates):.1f} runs={[round(x, 1) for x in rates]}")
print(f"RESULT engine=ort:{tag} peak_rss_mib="
      f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")

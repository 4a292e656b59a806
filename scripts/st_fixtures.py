#!/usr/bin/env python3
"""Reference embeddings from sentence-transformers for what `--model DIR` must load beyond
plain mean pooling: every pooling mode, with and without a Normalize module, and prompts
(by name, the default one, a literal one). Each case is the base model's folder with its
`modules.json`, `1_Pooling/config.json` and `config_sentence_transformers.json` changed; the
fixture records those files, so the Rust test (`tests/pooling.rs`) builds the same folders.

    "$(scripts/st.sh)" scripts/st_fixtures.py     # writes tests/fixtures/st-pooling.json
    "$(scripts/st.sh)" scripts/st_fixtures.py --mpnet   # tests/fixtures/st-mpnet.json

`--mpnet` does the same for all-mpnet-base-v2 (`mrl model fetch all-mpnet-base-v2`): the folder
as shipped (mean pooling, Normalize), CLS pooling without Normalize, and a named prompt, on the
texts above plus one longer than its 384-token limit (truncation, and relative positions up
to the last bucket).

Pinned: sentence-transformers 6.2.0, transformers 5.25.0, torch 2.9.1 (on the CPU), from PyPI
(`scripts/st.sh`).
Vectors are stored as little-endian float32, base64.
"""

import argparse
import base64
import json
import os
import shutil
import struct
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEXTS = [
    "A man is playing a guitar.",
    "Vitamin D deficiency is associated with lower bone mineral density in older adults, "
    "and supplementation reduces fracture risk only when calcium intake is adequate. " * 8,
    "東京は日本の首都です。",
    "",
]

MODES = ["cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens",
         "weightedmean_tokens", "lasttoken"]

PROMPTS = {"query": "query: ", "document": "passage: "}


def modules(normalize):
    m = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        m.append({"idx": 2, "name": "2", "path": "2_Normalize",
                  "type": "sentence_transformers.models.Normalize"})
    return m


def pooling(mode, width=384):
    cfg = {"word_embedding_dimension": width}
    for m in MODES:
        cfg[f"pooling_mode_{m}"] = m == mode
    cfg["include_prompt"] = True
    return cfg


def f32(v):
    return base64.b64encode(struct.pack(f"<{len(v)}f", *[float(x) for x in v])).decode()


def case_folder(base, tmp, name, files):
    d = os.path.join(tmp, name)
    shutil.copytree(base, d, ignore=shutil.ignore_patterns("2_Normalize", "README.md"))
    for rel, obj in files.items():
        path = os.path.join(d, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)
    if any(m["type"].endswith("Normalize") for m in files["modules.json"]):
        os.makedirs(os.path.join(d, "2_Normalize"), exist_ok=True)
    return d


def minilm_cases(model_dir, tmp, texts):
    from sentence_transformers import SentenceTransformer

    cases = []
    plain_st = {"prompts": {}, "default_prompt_name": None}
    for mode in MODES:
        for normalize in (True, False):
            name = f"{mode}{'' if normalize else '-raw'}"
            files = {"modules.json": modules(normalize),
                     "1_Pooling/config.json": pooling(mode),
                     "config_sentence_transformers.json": plain_st}
            model = SentenceTransformer(case_folder(model_dir, tmp, name, files), device="cpu")
            vecs = model.encode(texts, convert_to_numpy=True, batch_size=2)
            cases.append({"name": name, "files": files, "prompt_name": None,
                          "prompt": None, "embeddings": [f32(v) for v in vecs]})
    st = {"prompts": PROMPTS, "default_prompt_name": "query"}
    files = {"modules.json": modules(True),
             "1_Pooling/config.json": pooling("mean_tokens"),
             "config_sentence_transformers.json": st}
    model = SentenceTransformer(case_folder(model_dir, tmp, "prompts", files), device="cpu")
    for label, kw in [("default", {}), ("document", {"prompt_name": "document"}),
                      ("literal", {"prompt": "Represent this sentence: "})]:
        vecs = model.encode(texts, convert_to_numpy=True, batch_size=2, **kw)
        cases.append({"name": f"prompt-{label}", "files": files,
                      "prompt_name": kw.get("prompt_name"), "prompt": kw.get("prompt"),
                      "embeddings": [f32(v) for v in vecs]})
    return cases


def mpnet_cases(model_dir, tmp, texts):
    from sentence_transformers import SentenceTransformer

    plain_st = {"prompts": {}, "default_prompt_name": None}
    variants = [
        ("shipped", modules(True), pooling("mean_tokens", 768), plain_st, {}),
        ("cls-raw", modules(False), pooling("cls_token", 768), plain_st, {}),
        ("prompt-document", modules(True), pooling("mean_tokens", 768),
         {"prompts": PROMPTS, "default_prompt_name": None}, {"prompt_name": "document"}),
    ]
    cases = []
    for name, mods, pool, st, kw in variants:
        files = {"modules.json": mods, "1_Pooling/config.json": pool,
                 "config_sentence_transformers.json": st}
        model = SentenceTransformer(case_folder(model_dir, tmp, name, files), device="cpu")
        vecs = model.encode(texts, convert_to_numpy=True, batch_size=2, **kw)
        cases.append({"name": name, "files": files, "prompt_name": kw.get("prompt_name"),
                      "prompt": None, "embeddings": [f32(v) for v in vecs]})
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mpnet", action="store_true",
                    help="all-mpnet-base-v2's cases into tests/fixtures/st-mpnet.json")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    name = "all-mpnet-base-v2" if args.mpnet else "all-MiniLM-L6-v2"
    args.model = args.model or os.path.join(ROOT, "models", name)
    args.out = args.out or os.path.join(
        ROOT, "tests", "fixtures", "st-mpnet.json" if args.mpnet else "st-pooling.json")

    import sentence_transformers
    import torch

    torch.set_num_threads(2)
    texts = TEXTS + [TEXTS[1] * 2] if args.mpnet else TEXTS
    with tempfile.TemporaryDirectory() as tmp:
        cases = (mpnet_cases if args.mpnet else minilm_cases)(args.model, tmp, texts)
    out = {
        "generator": "scripts/st_fixtures.py",
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "model": os.path.basename(os.path.normpath(args.model)),
        "texts": texts,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"{len(cases)} cases, {len(texts)} texts -> {args.out}")


if __name__ == "__main__":
    main()

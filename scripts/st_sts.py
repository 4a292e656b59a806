#!/usr/bin/env python3
"""Spearman's rho of a sentence-transformers folder on an STS-B file, computed by
sentence-transformers itself (the reference for `mrl judge`'s STS figures):

    "$(scripts/st.sh)" scripts/st_sts.py models/all-mpnet-base-v2 ../shared/data/stsbenchmark/sts-dev.csv

Lines split on TAB (score in column 5, the pair in 6 and 7; extra trailing columns ignored);
cosine similarity of the normalised embeddings, batch 32, on the CPU.
"""

import sys

import numpy as np
import torch
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer


def main():
    model_dir, path = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    gold, a, b = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) < 7:
                continue
            gold.append(float(cols[4]))
            a.append(cols[5])
            b.append(cols[6])
    model = SentenceTransformer(model_dir, device="cpu")
    ea = model.encode(a, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
    eb = model.encode(b, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
    rho = spearmanr(gold, np.sum(ea * eb, axis=1)).statistic
    print(f"{model_dir} on {path}: {len(gold)} pairs, Spearman {rho:.4f}")


if __name__ == "__main__":
    main()

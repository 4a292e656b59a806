#!/usr/bin/env python3
"""Exports a sentence-transformers folder's transformer to ONNX with the pinned torch
(`scripts/st.sh`), for speed figures against ONNX Runtime on the same weights:

    "$(scripts/st.sh)" scripts/onnx_export.py models/all-mpnet-base-v2 models/ort/all-mpnet-base-v2.onnx

Inputs `input_ids`, `attention_mask` (and `token_type_ids` where the model has token types),
dynamic batch and sequence axes; output `last_hidden_state`. The TorchScript exporter
(dynamo=False), opset 17. Prints the largest absolute difference to PyTorch on two texts'
tokens (padding positions' outputs are arbitrary in both).
"""

import sys

import torch
from transformers import AutoModel, AutoTokenizer


def main():
    src, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    model = AutoModel.from_pretrained(src).eval()
    tok = AutoTokenizer.from_pretrained(src)
    enc = tok(["A man is playing a guitar.", "Vitamin D and bone density in older adults."],
              padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in enc and getattr(model.config, "type_vocab_size", 0):
        names.append("token_type_ids")
    args = tuple(enc[n] for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *xs):
            return self.m(**dict(zip(names, xs))).last_hidden_state

    # The reference first: after tracing, this transformers version's eager outputs drift.
    with torch.no_grad():
        want = model(**{n: enc[n] for n in names}).last_hidden_state.numpy()
    torch.onnx.export(Wrapped(model), args, out, input_names=names,
                      output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17,
                      dynamo=False)
    import onnxruntime as ort
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: enc[n].numpy() for n in names})[0]
    real = enc["attention_mask"].numpy().astype(bool)
    print(f"{out}: inputs {names}, max abs difference to PyTorch over real tokens "
          f"{abs(got - want)[real].max():.2e}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""PyTorch twin of `mrl bench train`'s training step (trainer/src/bench.rs).

Reads the spec mrl wrote (the student's starting weights, model config, loss, optimizer, the
profiles' gates and the batches with their teacher embeddings) and runs the same steps the
same way, as a PyTorch user would write them: padded batches with an attention mask,
torch's fused layer norm, GELU and scaled-dot-product attention, InfoNCE over the nested
prefixes plus in-batch similarity distillation toward the teacher, clip_grad_norm_ and
torch.optim.AdamW, on 2 threads. Prints one JSON object per profile on stdout.

    python scripts/bench_train.py SPEC.json     # the venv python of scripts/torch.sh
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

torch.set_num_threads(2)


def reset_peak_rss():
    # Linux: writing 5 to clear_refs resets VmHWM, so each profile reports its own peak.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class Student(torch.nn.Module):
    """BERT as the student computes it (trainer/src/student.rs), with hard profile gates."""

    def __init__(self, weights, cfg):
        super().__init__()
        self.cfg = cfg
        self.p = torch.nn.ParameterDict(
            {k.replace(".", "__"): torch.nn.Parameter(v.float().clone()) for k, v in weights.items()
             if v.is_floating_point()}
        )

    def w(self, name):
        return self.p[name.replace(".", "__")]

    def linear(self, x, name):
        return F.linear(x, self.w(name + ".weight"), self.w(name + ".bias"))

    def norm(self, x, name):
        h = self.cfg["hidden"]
        return F.layer_norm(x, (h,), self.w(name + ".weight"), self.w(name + ".bias"),
                            self.cfg["eps"])

    def forward(self, ids, mask, gates):
        cfg = self.cfg
        b, t = ids.shape
        nh, h = cfg["heads"], cfg["hidden"]
        dh = h // nh
        e = "embeddings."
        x = (F.embedding(ids, self.w(e + "word_embeddings.weight"))
             + self.w(e + "position_embeddings.weight")[:t].unsqueeze(0)
             + self.w(e + "token_type_embeddings.weight")[0])
        x = self.norm(x, e + "LayerNorm")
        attend = mask.bool()[:, None, None, :]
        for l in range(cfg["layers"]):
            p = f"encoder.layer.{l}."
            split = lambda y: y.view(b, t, nh, dh).transpose(1, 2)
            q = split(self.linear(x, p + "attention.self.query"))
            k = split(self.linear(x, p + "attention.self.key"))
            v = split(self.linear(x, p + "attention.self.value"))
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
            if gates is not None:
                ctx = ctx * gates["heads"][None, :, None, None]
            ctx = ctx.transpose(1, 2).reshape(b, t, h)
            a = self.norm(self.linear(ctx, p + "attention.output.dense") + x,
                          p + "attention.output.LayerNorm")
            f = F.gelu(self.linear(a, p + "intermediate.dense"))
            if gates is not None:
                f = f * gates["ffn"]
            y = self.norm(self.linear(f, p + "output.dense") + a, p + "output.LayerNorm")
            x = y if gates is None else x + (y - x) * gates["layers"][l]
        m = mask.unsqueeze(2)
        pooled = (x * m).sum(1) / m.sum(1)
        if "head__weight" in self.p:
            pooled = F.linear(pooled, self.w("head.weight"), self.w("head.bias"))
        return pooled


def normalize(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-12)


def info_nce(q, d, temperature):
    logits = normalize(q) @ normalize(d).T / temperature
    return F.cross_entropy(logits, torch.arange(q.shape[0]))


def distill(student, teacher, temperature):
    sims = lambda x: (lambda n: n @ n.T / temperature)(normalize(x))
    log_t = F.log_softmax(sims(teacher), -1)
    log_s = F.log_softmax(sims(student), -1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def step_loss(q, d, tq, td, loss):
    total_w = sum(loss["dim_weights"])
    nce = sum(w / total_w * info_nce(q[:, :k], d[:, :k], loss["temperature"])
              for k, w in zip(loss["nested_dims"], loss["dim_weights"]))
    width = tq.shape[1]
    kl = (distill(q[:, :width], tq, loss["distill_temperature"])
          + distill(d[:, :width], td, loss["distill_temperature"]))
    return nce + loss["distill_weight"] * kl


def pad(seqs):
    t = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    mask = torch.zeros(len(seqs), t)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1.0
    return ids, mask


def main():
    spec = json.load(open(sys.argv[1]))
    cfg = spec["config"]
    weights = load_file(spec["params"])
    for prof in spec["profiles"]:
        model = Student(weights, cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.999),
                                eps=1e-8, weight_decay=spec["weight_decay"])
        gates = None
        if not prof["full"]:
            gates = {
                "layers": [1.0 if l in prof["layers"] else 0.0 for l in range(cfg["layers"])],
                "heads": (torch.arange(cfg["heads"]) < prof["heads"]).float(),
                "ffn": (torch.arange(cfg["intermediate"]) < prof["ffn"]).float(),
            }
        reset_peak_rss()
        seconds, losses, tokens = [], [], 0
        for i, b in enumerate(spec["batches"]):
            tq = torch.tensor(b["teacher_queries"])
            td = torch.tensor(b["teacher_positives"])
            start = time.perf_counter()
            qi, qm = pad(b["queries"])
            di, dm = pad(b["positives"])
            loss = step_loss(model(qi, qm, gates), model(di, dm, gates), tq, td, spec["loss"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec["clip"])
            opt.step()
            dt = time.perf_counter() - start
            losses.append(loss.item())
            if i >= spec["warmup"]:
                seconds.append(dt)
                tokens += sum(map(len, b["queries"])) + sum(map(len, b["positives"]))
        print(json.dumps({
            "engine": "pytorch", "version": torch.__version__, "profile": prof["name"],
            "seconds": seconds, "tokens_per_step": tokens / max(len(seconds), 1),
            "losses": losses, "peak_rss_mib": peak_rss_mib(),
            "threads": torch.get_num_threads(),
        }), flush=True)


if __name__ == "__main__":
    main()

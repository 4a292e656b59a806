#!/usr/bin/env python3
"""Bounded soak of `mrl serve`: N clients mix embeddings, searches and document writes for a
fixed time against one server on loopback, then report requests served, 429s, errors (any 5xx
or broken connection: 0 expected), latency percentiles per kind and the server's RSS at start
and end. The collection is first filled to the mix's steady state (`--prefill`), so what
RSS does over the run is creep, not a collection still growing.

    cargo build --release
    python3 scripts/soak.py                      # 600 s, 32 clients, target/release/mrl
    python3 scripts/soak.py --seconds 60 --clients 8

Standard library only. The server runs on a free loopback port over a temporary data folder
and is stopped at the end; the script exits non-zero when any error was seen.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Document ids are d0 .. d4999: adds and deletes pick among them.
IDS = 5000


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def memory_kib(pid):
    """VmRSS split into anonymous memory (heap, stacks) and file-backed pages (the store's
    memory-mapped segments, the binary), to tell which one grows."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(line.split()[1])
    return out


def folder_mib(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return round(total / 2**20, 1)


def texts(path):
    with open(path) as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


class Client:
    """One keep-alive connection, reopened after an error."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.conn = None
        self.last_body = None
        self.last_text = None

    def request(self, method, path, body):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            self.conn.request(method, path, body=json.dumps(body),
                              headers={"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            raw = resp.read()
            self.last_text = raw.decode("utf-8", "replace")
            try:
                self.last_body = json.loads(raw) if raw else None
            except ValueError:
                self.last_body = None
            return resp.status
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "mrl"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "all-MiniLM-L6-v2"),
                    help="model folder (default: the base model)")
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--texts", default=os.path.join(ROOT, "..", "shared", "bench", "texts.jsonl"))
    ap.add_argument("--mix", default="50,30,15,5",
                    help="percent of embeddings, searches, document adds, deletes (to tell what "
                         "grows: e.g. 60,40,0,0 writes nothing to the store)")
    ap.add_argument("--prefill", type=int, default=None,
                    help="documents written before the clock starts (default: the mix's steady "
                         "state, 5000 ids x adds / (adds + deletes), so the collection does not "
                         "grow during the run and RSS measures creep, not data; 0: none)")
    args = ap.parse_args()
    mix = [float(x) for x in args.mix.split(",")]
    if len(mix) != 4 or min(mix) < 0 or sum(mix) <= 0:
        sys.exit("--mix takes four non-negative numbers: embed,search,add,delete")

    pool = texts(args.texts)
    data = tempfile.mkdtemp(prefix="mrl-soak-")
    env = dict(os.environ, MRL_MODEL=args.model)
    server = subprocess.Popen(
        [args.binary, "serve", "--port", "0", "--allow-any-dim", "--data-dir", data],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    line = server.stdout.readline().strip()
    if not line.startswith("listening on http://"):
        sys.exit(f"mrl serve did not start: {line!r}")
    host, port = line.removeprefix("listening on http://").rsplit(":", 1)
    port = int(port)
    setup = Client(host, port)
    assert setup.request("PUT", "/collections/soak", {"dims": [64, 128, 384]}) in (200, 201)
    assert setup.request("POST", "/embed", {"inputs": pool[:4]}) == 200
    if args.prefill is None:
        writes = mix[2] + mix[3]
        args.prefill = round(IDS * mix[2] / writes) if writes > 0 else 0
    fill = random.Random(args.seed).sample(range(IDS), min(args.prefill, IDS))
    for start in range(0, len(fill), 32):
        docs = [{"id": f"d{n}", "text": pool[n % len(pool)], "payload": {"client": -1}}
                for n in fill[start:start + 32]]
        assert setup.request("POST", "/collections/soak/documents", {"documents": docs}) == 200
    rss_start = rss_kib(server.pid)

    lock = threading.Lock()
    statuses = Counter()
    errors = Counter()
    latency = defaultdict(list)
    deadline = time.monotonic() + args.seconds

    def work(i):
        rng = random.Random(args.seed * 1000 + i)
        client = Client(host, port)
        while time.monotonic() < deadline:
            r = rng.random() * sum(mix)
            if r < mix[0]:
                kind = "embed"
                body = {"inputs": rng.sample(pool, rng.randint(1, 4)),
                        "dim": rng.choice([64, 128, 384])}
                method, path = "POST", "/embed"
            elif r < mix[0] + mix[1]:
                kind = "search"
                body = {"query": rng.choice(pool), "dim": 384, "limit": 10}
                if rng.random() < 0.5:
                    body["funnel"] = {"dim": 64, "candidates": 100}
                method, path = "POST", "/collections/soak/search"
            elif r < mix[0] + mix[1] + mix[2]:
                kind = "add"
                # Ids are unique within a request (a repeated one is a 400 by design).
                docs = [{"id": f"d{n}", "text": rng.choice(pool), "payload": {"client": i}}
                        for n in rng.sample(range(IDS), rng.randint(1, 4))]
                body = {"documents": docs}
                method, path = "POST", "/collections/soak/documents"
            else:
                kind = "delete"
                body = {"ids": [f"d{rng.randrange(IDS)}" for _ in range(rng.randint(1, 4))]}
                method, path = "DELETE", "/collections/soak/documents"
            t0 = time.monotonic()
            try:
                status = client.request(method, path, body)
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    errors[f"{kind}: {type(e).__name__}"] += 1
                continue
            dt = time.monotonic() - t0
            with lock:
                statuses[(kind, status)] += 1
                if status == 200:
                    latency[kind].append(dt)
                elif status != 429:
                    errors[f"{kind}: HTTP {status}"] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(args.clients)]
    started = time.monotonic()
    rss_peak = rss_start
    rss_samples = []  # one a minute, to tell growth from warm-up
    detail = []  # the same minutes: anonymous vs file-backed RSS, the store's folder, points
    probe = Client(host, port)
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(1)
        if server.poll() is None:
            rss = rss_kib(server.pid)
            rss_peak = max(rss_peak, rss)
            if time.monotonic() - started >= 60 * (len(rss_samples) + 1):
                rss_samples.append(round(rss / 1024, 1))
                mem = memory_kib(server.pid)
                points = None
                for _ in range(2):  # the idle keep-alive connection may have been closed
                    try:
                        if probe.request("GET", "/collections/soak", None) == 200:
                            points = probe.last_body.get("count")
                        break
                    except Exception:  # a probe failure must not end the soak
                        pass
                heap = {}
                try:
                    if probe.request("GET", "/metrics", None) == 200:
                        pass
                except Exception:
                    pass
                for line in (probe.last_text or "").splitlines():
                    for name in ("mrl_heap_in_use_bytes", "mrl_heap_free_bytes"):
                        if line.startswith(name + " "):
                            heap[name[9:-6] + "_mib"] = round(float(line.split()[1]) / 2**20, 1)
                detail.append({"anon_mib": round(mem.get("RssAnon", 0) / 1024, 1),
                               **heap,
                               "file_mib": round(mem.get("RssFile", 0) / 1024, 1),
                               "data_mib": folder_mib(data), "points": points})
    elapsed = time.monotonic() - started
    alive = server.poll() is None
    rss_end = rss_kib(server.pid) if alive else 0
    server.terminate()
    server.wait(timeout=60)
    shutil.rmtree(data, ignore_errors=True)

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    served = sum(n for (k, s), n in statuses.items() if s == 200)
    busy = sum(n for (k, s), n in statuses.items() if s == 429)
    report = {
        "seconds": round(elapsed, 1),
        "clients": args.clients,
        "prefill": args.prefill,
        "served": served,
        "served_per_s": round(served / elapsed, 1),
        "http_429": busy,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "by_kind": {k: {"served": len(v), "p50_ms": round(pct(v, 0.5) * 1000, 1),
                        "p99_ms": round(pct(v, 0.99) * 1000, 1)} for k, v in sorted(latency.items())},
        "rss_mib": {"start": round(rss_start / 1024, 1), "peak": round(rss_peak / 1024, 1),
                    "end": round(rss_end / 1024, 1), "each_minute": rss_samples,
                    "each_minute_detail": detail},
        "server_alive_at_end": alive,
    }
    print(json.dumps(report, indent=2))
    if report["errors"] or not alive:
        sys.exit(1)


if __name__ == "__main__":
    main()

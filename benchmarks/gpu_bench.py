"""JPQ against the uncompressed table on one GPU, side by side: training step and top-20, with peak memory.

    python benchmarks/gpu_bench.py --sizes 1e6,1e7 --json gpu-bench.json     # benchmarks/gpu_check.sh runs it

Training step: bench-scale's model (BPR, users = items = N, d = 64, batch 4096 triples, Adam), uncompressed
(``nn.Embedding``, dense Adam: what a host builds) against ``JPQEmbedding`` (M = 16, ksub = 256, random
codes: the step does not depend on how codes were assigned); median of ``--steps`` after a warm-up.
Top-20: one query and a batch of 256 against N items, ``JPQEmbedding.topk`` against
``torch.topk(q @ W.T)`` on the same GPU. Peak memory: ``torch.cuda.max_memory_allocated`` per case.
A case that does not fit is reported as such. Stops with one line and exit 2 without a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

from urecjpq_plugin.codes import random_codes
from urecjpq_plugin.jpq import JPQEmbedding

D, M, KSUB, BATCH = 64, 16, 256, 4096


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: kernels, allocator, per-step table
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tables(kind: str, n: int) -> tuple[nn.Module, nn.Module]:
    if kind == "uncompressed":
        users, items = nn.Embedding(n, D), nn.Embedding(n, D)
        nn.init.xavier_normal_(users.weight), nn.init.xavier_normal_(items.weight)
    else:
        users = JPQEmbedding(random_codes(n, M, KSUB, 0), KSUB, D)
        items = JPQEmbedding(random_codes(n, M, KSUB, 1), KSUB, D)
    return users.cuda(), items.cuda()


def train_step(kind: str, n: int, steps: int) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        users, items = _tables(kind, n)
        optimizer = torch.optim.Adam([*users.parameters(), *items.parameters()], lr=1e-3)
        generator = torch.Generator(device="cuda").manual_seed(0)

        def step() -> None:
            u, i, j = (torch.randint(0, n, (BATCH,), device="cuda", generator=generator) for _ in range(3))
            ue = users(u)
            loss = -torch.nn.functional.logsigmoid((ue * (items(i) - items(j))).sum(-1)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        seconds = _timed(step, steps)
        return {"seconds": seconds, "peak_bytes": torch.cuda.max_memory_allocated()}
    except torch.cuda.OutOfMemoryError:
        return {"seconds": None, "peak_bytes": None, "note": "does not fit"}
    finally:
        users = items = optimizer = None
        torch.cuda.empty_cache()


def top20(kind: str, n: int, batch: int, repeats: int) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        _, items = _tables(kind, n)
        queries = torch.randn(batch, D, device="cuda")
        with torch.no_grad():
            if kind == "uncompressed":
                run = lambda: torch.topk(queries @ items.weight.T, 20, dim=1)  # noqa: E731
            else:
                items.invalidate_cache()
                run = lambda: items.topk(queries, 20)  # noqa: E731
            seconds = _timed(run, repeats)
        return {"seconds": seconds, "peak_bytes": torch.cuda.max_memory_allocated()}
    except torch.cuda.OutOfMemoryError:
        return {"seconds": None, "peak_bytes": None, "note": "does not fit"}
    finally:
        items = None
        torch.cuda.empty_cache()


def _fmt(case: dict) -> str:
    if case["seconds"] is None:
        return case.get("note", "-")
    return f"{case['seconds'] * 1e3:9.2f} ms  {case['peak_bytes'] / 2**20:9.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1e6,1e7", help="IDs per table, comma-separated (default %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per case")
    p.add_argument("--repeats", type=int, default=20, help="timed top-20 calls per case")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU", file=sys.stderr)
        return 2
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, d={D} M={M} ksub={KSUB}")
    results = []
    for n in sizes:
        row = {"ids": n, "train": {k: train_step(k, n, args.steps) for k in ("uncompressed", "jpq")}}
        for batch in (1, 256):
            row[f"top20_b{batch}"] = {k: top20(k, n, batch, args.repeats) for k in ("uncompressed", "jpq")}
        results.append(row)
        for case in ("train", "top20_b1", "top20_b256"):
            base, jpq = row[case]["uncompressed"], row[case]["jpq"]
            ratio = (f"time jpq/base {jpq['seconds'] / base['seconds']:.2f}x, memory {jpq['peak_bytes'] / base['peak_bytes']:.1%}"
                     if base["seconds"] and jpq["seconds"] else "")
            print(f"{n:>10,} {case:<11} uncompressed {_fmt(base)} | jpq {_fmt(jpq)} | {ratio}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

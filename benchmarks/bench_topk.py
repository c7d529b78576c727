"""Full-catalogue scoring from codes (PQ) vs decode-then-matmul vs matmul on a pre-decoded table.

    python benchmarks/bench_topk.py                      # 10^5, 10^6, 10^7 items; d=64, 512; B=1, 256
    python benchmarks/bench_topk.py --items 1e6 --dims 64 --batches 1 --reps 7

Per (items, d, batch) every method runs in turn within each repetition (so load from other processes
hits them alike) and the median time is reported, with the ratios taken from the same run:

- ``pq``         ``pq_scores``: lookup tables + M gathers per item, codes stay uint8 -> ``[B, N]``
- ``decode+mm``  what a host does with ``.weight``: decode the ``[N, d]`` table, then ``q @ W.T``
- ``predecoded`` ``q @ W.T`` on a table decoded once beforehand (the uncompressed baseline, 4*N*d bytes)
- ``pq-topk``    ``topk_from_codes(k=20)``: PQ scoring in chunks with a running top-k (bounded memory)

Combinations whose tensors would exceed ``--mem-gb`` are skipped and reported with their estimate.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from urecjpq_plugin.codes import random_codes
from urecjpq_plugin.jpq import JPQEmbedding
from urecjpq_plugin.topk import pq_scores, topk_from_codes

GB = 1024**3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=lambda s: [int(float(x)) for x in s.split(",")], default=[10**5, 10**6, 10**7])
    p.add_argument("--dims", type=lambda s: [int(x) for x in s.split(",")], default=[64, 512])
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 256])
    p.add_argument("--M", type=int, default=8)
    p.add_argument("--ksub", type=int, default=256)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--reps", type=int, default=5, help="repetitions per combination (median reported)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop repeating a combination after this long (min 3 reps)")
    p.add_argument("--mem-gb", type=float, default=8.0, help="skip methods whose tensors would exceed this")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p.parse_args(argv)


def memory_needs(n: int, d: int, batch: int, M: int) -> dict[str, int]:
    """Peak bytes per method, beyond the codes: score matrix, decoded table, int64 decode indices."""
    scores = 4 * batch * n
    decoded = 4 * n * d
    return {
        "pq": scores,
        "decode+mm": scores + decoded + 8 * n * M,
        "predecoded": scores + decoded,  # the decoded table is held for the whole run
        "pq-topk": 4 * batch * 65536 * 2,
    }


def run_combination(n: int, d: int, batch: int, args) -> dict:
    torch.manual_seed(0)
    table = JPQEmbedding(random_codes(n, args.M, args.ksub, seed=0), args.ksub, d)
    table.requires_grad_(False)
    queries = torch.randn(batch, d)
    needs = memory_needs(n, d, batch, args.M)
    budget = args.mem_gb * GB
    fits = {name: need <= budget for name, need in needs.items()}
    decoded = table.weight if fits["predecoded"] else None
    methods = {
        "pq": lambda: pq_scores(queries, table.sub_embeddings, table.codes),
        "decode+mm": lambda: queries @ table.weight.T,
        "predecoded": lambda: queries @ decoded.T,
        "pq-topk": lambda: topk_from_codes(queries, table.sub_embeddings, table.codes, args.k),
    }
    methods = {name: fn for name, fn in methods.items() if fits[name]}
    times: dict[str, list[float]] = {name: [] for name in methods}
    started = time.perf_counter()
    for rep in range(args.reps + 1):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - t0)
            del result
        if rep == 0 and max(t[0] for t in times.values()) < 2.0:
            times = {name: [] for name in methods}  # first round was a warm-up
        if len(next(iter(times.values()))) >= 3 and time.perf_counter() - started > args.max_seconds:
            break
    med = {name: statistics.median(t) for name, t in times.items()}
    reps = len(next(iter(times.values())))
    skipped = {name: needs[name] for name in needs if not fits[name]}
    return {"n": n, "d": d, "batch": batch, "median": med, "reps": reps, "skipped": skipped}


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else (f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:.0f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, M={args.M}, ksub={args.ksub}, k={args.k}; times in ms (median)")
    header = "| items | d | batch | pq | decode+mm | predecoded | pq-topk | decode+mm / pq | predecoded / pq | reps | skipped |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for n in args.items:
        for d in args.dims:
            for batch in args.batches:
                r = run_combination(n, d, batch, args)
                m = r["median"]
                ratio = lambda a: f"{m[a] / m['pq']:.1f}x" if a in m and "pq" in m else "-"
                skipped = ", ".join(f"{k} (~{v / GB:.1f} GB)" for k, v in r["skipped"].items()) or ""
                print(
                    f"| {n:.0e} | {d} | {batch} | {fmt_ms(m.get('pq'))} | {fmt_ms(m.get('decode+mm'))} | "
                    f"{fmt_ms(m.get('predecoded'))} | {fmt_ms(m.get('pq-topk'))} | {ratio('decode+mm')} | "
                    f"{ratio('predecoded')} | {r['reps']} | {skipped} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

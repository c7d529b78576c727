"""Top-k over the whole catalogue: uncompressed matmul+topk vs faiss IndexPQ vs our dispatcher, one run.

    python benchmarks/bench_topk.py                 # the table in docs/benchmarks.md (1 thread)
    python benchmarks/bench_topk.py --cases 1e6:64:1,1e6:64:256 --reps 9
    python benchmarks/bench_topk.py --calibrate     # per-item costs behind topk._NS (the cut-over points)

Per case (items:d:batch) every method runs in turn within each repetition (so load from other
processes hits them alike), median time reported, ratios from the same run. Same random codes
(M=8, ksub=256) and sub-embeddings for all methods; k=20; torch and faiss on 1 thread.

- ``mm+topk``     ``(q @ W.T).topk(k)`` on the decoded table ``W`` held in memory (the uncompressed model)
- ``faiss``       ``faiss.IndexPQ(METRIC_INNER_PRODUCT).search`` over the same codes (export.to_faiss_index)
- ``ours``        ``JPQEmbedding.topk``: the dispatcher (faiss scan / torch scan / chunked decode+matmul)
- ``ours-nofaiss`` the dispatcher's choice as if faiss were not installed

``peak MB`` (cases with ``:mem``): extra resident memory of one ``ours`` call at its peak, measured in a
fresh subprocess from /proc/self/status (VmHWM after resetting it via /proc/self/clear_refs, minus the
resident size before the call; torch's allocations are invisible to tracemalloc).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from urecjpq_plugin import topk as topk_mod
from urecjpq_plugin import topk_kernels as kernels
from urecjpq_plugin.codes import random_codes
from urecjpq_plugin.jpq import JPQEmbedding

GB = 1024**3
DEFAULT_CASES = "1e6:64:1,1e6:64:256,1e6:512:1,1e7:64:1:mem"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=DEFAULT_CASES, help="items:d:batch[:mem], comma separated (default %(default)s)")
    p.add_argument("--M", type=int, default=8)
    p.add_argument("--ksub", type=int, default=256)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--reps", type=int, default=7, help="repetitions per case (median reported)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop repeating a case after this long (min 3 reps)")
    p.add_argument("--mem-gb", type=float, default=6.0, help="skip mm+topk when its table and scores exceed this")
    p.add_argument("--threads", type=int, default=1, help="torch and faiss threads (default 1)")
    p.add_argument("--calibrate", action="store_true", help="print the per-item costs of the cost model instead")
    p.add_argument("--peak-child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    faiss = kernels.faiss_or_none()
    if faiss is not None:
        faiss.omp_set_num_threads(n)


def make_table(n: int, d: int, M: int, ksub: int) -> JPQEmbedding:
    torch.manual_seed(0)
    table = JPQEmbedding(random_codes(n, M, ksub, seed=0), ksub, d)
    table.requires_grad_(False)
    with torch.no_grad():
        table.sub_embeddings.normal_()
    return table


def timed(methods: dict, reps: int, max_seconds: float) -> tuple[dict[str, float], int]:
    times: dict[str, list[float]] = {name: [] for name in methods}
    started = time.perf_counter()
    for _ in range(reps + 1):  # the first round is a warm-up (faiss quantiser cache, page faults)
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if len(times[name]) >= 4 and time.perf_counter() - started > max_seconds:
            break
    return {name: statistics.median(t[1:]) for name, t in times.items()}, len(times[name]) - 1


def vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_child(spec: str) -> None:
    """In a fresh process: extra peak RSS (MB) of one dispatcher call, printed as JSON."""
    n, d, M, ksub, k, method = json.loads(spec)
    set_threads(1)
    table = make_table(n, d, M, ksub)
    queries = torch.randn(1, d)
    before = vm_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    chosen = topk_mod.choose_method(queries, table.sub_embeddings, table.codes, allow_faiss=method == "auto")
    topk_mod.topk_from_codes(queries, table.sub_embeddings, table.codes, k, method=chosen)
    print(json.dumps({"peak_mb": (vm_kib("VmHWM") - before) / 1024, "method": chosen}))


def peak_mb(n: int, d: int, args, method: str) -> str:
    spec = json.dumps([n, d, args.M, args.ksub, args.k, method])
    out = subprocess.run([sys.executable, __file__, "--peak-child", spec], capture_output=True, text=True)
    if out.returncode:
        return f"failed: {out.stderr.strip().splitlines()[-1:]}"
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return f"{r['peak_mb']:.0f} ({r['method']})"


def run_case(n: int, d: int, batch: int, args) -> dict:
    from urecjpq_plugin.export import to_faiss_index

    table = make_table(n, d, args.M, args.ksub)
    queries = torch.randn(batch, d)
    sub, codes, k = table.sub_embeddings, table.codes, args.k
    methods = {}
    if 4 * n * d + 4 * n * batch <= args.mem_gb * GB:
        with torch.no_grad():
            decoded = table.weight
        methods["mm+topk"] = lambda: (queries @ decoded.T).topk(k, dim=1)
    index = to_faiss_index(table)
    methods["faiss"] = lambda: index.search(queries.numpy(), k)
    methods["ours"] = lambda: table.topk(queries, k)
    nofaiss = topk_mod.choose_method(queries, sub, codes, allow_faiss=False)
    methods["ours-nofaiss"] = lambda: topk_mod.topk_from_codes(queries, sub, codes, k, method=nofaiss)
    med, reps = timed(methods, args.reps, args.max_seconds)
    chosen = topk_mod.choose_method(queries, sub, codes)
    return {"median": med, "reps": reps, "chosen": chosen, "nofaiss": nofaiss}


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else (f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:.0f}")


def table_main(args) -> None:
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, M={args.M}, ksub={args.ksub}, k={args.k}; ms (median)")
    header = (
        "| items | d | batch | mm+topk | faiss IndexPQ | ours (method) | ours-nofaiss (method) | mm+topk / ours | "
        "faiss / ours | mm+topk / ours-nofaiss | peak MB ours / nofaiss | reps |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for case in args.cases.split(","):
        parts = case.split(":")
        n, d, batch = int(float(parts[0])), int(parts[1]), int(parts[2])
        r = run_case(n, d, batch, args)
        m = r["median"]
        ratio = lambda a, b: f"{m[a] / m[b]:.1f}x" if a in m and b in m else "-"
        peak = f"{peak_mb(n, d, args, 'auto')} / {peak_mb(n, d, args, 'nofaiss')}" if "mem" in parts[3:] else ""
        print(
            f"| {n:.0e} | {d} | {batch} | {fmt_ms(m.get('mm+topk'))} | {fmt_ms(m['faiss'])} | "
            f"{fmt_ms(m['ours'])} ({r['chosen']}) | {fmt_ms(m['ours-nofaiss'])} ({r['nofaiss']}) | "
            f"{ratio('mm+topk', 'ours')} | {ratio('faiss', 'ours')} | {ratio('mm+topk', 'ours-nofaiss')} | {peak} | {r['reps']} |",
            flush=True,
        )


def calibrate(args) -> None:
    """Per-item costs (ns) of each kernel at 10^6 items, the constants of ``topk._NS``."""
    n, M, k = 10**6, args.M, args.k
    out = {}
    for d in (64, 512):
        table = make_table(n, d, M, args.ksub)
        sub, codes = table.sub_embeddings, table.codes
        q1, q256 = torch.randn(1, d), torch.randn(256, d)
        S1 = topk_mod.lookup_tables(q1, sub)
        P = kernels.pair_tables(S1[:, 0])
        buf = torch.empty(65536)
        chunk = topk_mod._matmul_chunk(256, d)

        def decode_all():
            for s in range(0, n, chunk):
                kernels.decode_rows(sub, codes[s : s + chunk])

        rows = kernels.decode_rows(sub, codes[:chunk])
        scores = q256 @ rows.T
        scores1 = torch.randn(1, 65536)  # one query scans in 65536-item chunks
        methods = {
            "faiss_per_split": lambda: kernels.faiss_topk(q1, sub, codes, k, 8),
            "pair_per_lookup": lambda: [kernels.pair_scores(P, codes[s : s + 65536], buf[: min(65536, n - s)]) for s in range(0, n, 65536)],
            "split_per_lookup": lambda: [topk_mod.item_major_scores(S1, codes[s : s + 65536]) for s in range(0, n, 65536)],
            "pair_tables": lambda: kernels.pair_tables(S1[:, 0]),
            "decode_per_float": decode_all,
            "mm_per_fma": lambda: [q256 @ rows.T for _ in range(0, n, chunk)],
            "running_topk_256": lambda: _running(scores, n, k),
            "running_topk_1": lambda: _running(scores1, n, k),
        }
        med, _ = timed(methods, args.reps, args.max_seconds)
        per = {
            "faiss_per_split": n * M, "pair_per_lookup": n * M / 2, "split_per_lookup": n * M, "pair_tables": 1,
            "decode_per_float": n * d, "mm_per_fma": 256 * n * d, "running_topk_256": 256 * n, "running_topk_1": n,
        }
        out[d] = {name: round(med[name] * 1e9 / per[name], 3) for name in med}
    print(json.dumps(out, indent=1))


def _running(scores: torch.Tensor, n: int, k: int) -> None:
    best = topk_mod._RunningTopK(k)
    chunk = scores.shape[1]
    for start in range(0, n, chunk):
        best.add(scores + (start % 7) * 1e-3, start)  # different chunks, realistic filtering


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.peak_child:
        peak_child(args.peak_child)
        return 0
    set_threads(args.threads)
    calibrate(args) if args.calibrate else table_main(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

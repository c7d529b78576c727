"""Time and memory of code assignment on bench-scale's synthetic data, by stage.

    python benchmarks/bench_codes.py [--sizes 1e6,1e7] [--code-assign auto] [--M 16] [--ksub 256] [--threads 1]

``--code-assign`` (default: the plugin's default, ``auto``) goes through ``assign_codes`` as a host
would, with tables of width ``--dim`` (64); ``auto`` takes ``svd_pq_cos`` on this sparse data, whose
rank is capped by its SVD memory budget (at 10^7 + 10^7 IDs that leaves RecJPQ's ``svd``).

Per size (users = items, bench-scale's generator and interactions per user), one process each
with torch and BLAS on --threads threads: the CPU seconds of the randomised SVD's sparse products
(X.T as CSR, then X @ D and X.T @ D), its orthonormalisations, the quantile
binning and the distinct-code repair, and the peak RSS over the whole assignment. CPU seconds
stay meaningful on a machine shared with other jobs (with --threads 1).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import time

STAGES = {  # cProfile function name -> stage
    "times": "sparse X @ D",
    "t_times": "sparse X.T @ D",
    "transpose_csr": "X.T as CSR",
    "orthonormalize": "orthonormalise (Cholesky-QR)",
    "quantile_bin": "quantile binning",
    "make_distinct": "distinct-code repair",
    "kmeans": "PQ k-means",
    "encode": "PQ assignment",
}


def child(size: int, M: int, ksub: int, threads: int, code_assign: str, dim: int) -> dict:
    import torch

    from urecjpq_bench.scale import per_user_for
    from urecjpq_bench.synthetic import generate
    from urecjpq_plugin.assign import assign_codes
    from urecjpq_plugin.config import JPQConfig
    from urecjpq_plugin.distinct import distinct_code_fraction

    torch.set_num_threads(threads)
    data = generate(size, size, per_user=per_user_for(size), seed=0)
    X = data.train_csr()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    profile = cProfile.Profile(time.process_time)  # stage times in CPU seconds, like the total
    wall, cpu = time.perf_counter(), time.process_time()
    profile.enable()
    codes = assign_codes(JPQConfig(M=M, ksub=ksub, code_assign=code_assign, seed=0, dim=dim), X)
    user_codes, item_codes = codes["user"], codes["item"]
    profile.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = pstats.Stats(profile).stats
    stages = {label: 0.0 for label in STAGES.values()}
    for (_, _, name), (_, _, _, cumulative, _) in stats.items():
        if name in STAGES:
            stages[STAGES[name]] += cumulative
    return {
        "size": size, "nnz": int(X.nnz), "wall_s": wall, "cpu_s": cpu, "stages_s": stages,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30,
        "rss_before_gib": rss_before / 2**30,
        "distinct": [distinct_code_fraction(user_codes), distinct_code_fraction(item_codes)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1e6,1e7")
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--ksub", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--code-assign", default="auto", help="jpq_code_assign (default auto)")
    p.add_argument("--dim", type=int, default=64, help="table width (svd_pq's SVD rank)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.M, args.ksub, args.threads, args.code_assign, args.dim)))
        return
    try:
        sizes = [int(float(s)) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes {args.sizes!r} is invalid; give comma-separated sizes such as 1e6,1e7")
    for flag, value, least in (("--sizes", min(sizes), 2), ("--M", args.M, 1), ("--ksub", args.ksub, 2),
                               ("--threads", args.threads, 1)):
        if value < least:
            p.error(f"{flag} {value} is invalid; it must be {least} or more")
    print(f"jpq_code_assign={args.code_assign}, M={args.M}, ksub={args.ksub}, d={args.dim}, {args.threads} thread(s); "
          "wall and CPU seconds, CPU seconds by stage")
    print("| users = items | interactions | wall s | CPU s | " + " | ".join(STAGES.values()) + " | peak RSS | distinct user / item |")
    print("|---" * (6 + len(STAGES)) + "|")
    for size in sizes:
        cmd = [sys.executable, __file__, "--child", str(size), "--M", str(args.M), "--ksub", str(args.ksub),
               "--threads", str(args.threads), "--code-assign", args.code_assign, "--dim", str(args.dim)]
        # BLAS (numpy's Gram and Cholesky passes) gets the same thread count as torch
        env = dict(os.environ, **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
        r = json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout.splitlines()[-1])
        stages = " | ".join(f"{r['stages_s'][s]:.1f}" for s in STAGES.values())
        print(f"| {size:.0e} | {r['nnz']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {stages} | "
              f"{r['peak_rss_gib']:.2f} GiB | {r['distinct'][0]:.4f} / {r['distinct'][1]:.4f} |", flush=True)


if __name__ == "__main__":
    main()

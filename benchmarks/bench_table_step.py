"""One training step that reads a whole table (``.weight``), as MMRec's BPR and LightGCN do every batch:
an uncompressed ``nn.Parameter`` against a JPQ table, with split dropout and the degree scale added one at a time.

    python benchmarks/bench_table_step.py [--rows 9308] [--d 64] [--reps 200]

Each step: read the table, a loss over it, backward, Adam. CPU milliseconds of this process (one thread), side by
side in one run; the ratio is against the uncompressed table.
"""

from __future__ import annotations

import argparse
import time

import torch

from urecjpq_plugin import JPQEmbedding


def cpu_ms(step, reps: int) -> float:
    step()  # warm-up: allocations, the optimizer's state
    start = time.process_time()
    for _ in range(reps):
        step()
    return (time.process_time() - start) / reps * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=9308, help="IDs in the table (default: TikTok's users)")
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--ksub", type=int, default=256)
    p.add_argument("--reps", type=int, default=200)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    weight = torch.nn.Parameter(torch.randn(a.rows, a.d))
    opt = torch.optim.Adam([weight], lr=1e-3)

    def plain_step():
        loss = weight.square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    base = cpu_ms(plain_step, a.reps)
    print(f"{'table':<34} {'ms/step':>8} {'ratio':>6}")
    print(f"{'nn.Parameter (uncompressed)':<34} {base:8.2f} {1.0:6.2f}")
    codes = torch.randint(0, a.ksub, (a.rows, a.M), dtype=torch.uint8)
    for name, dropout, scaled in (("JPQ", 0.0, False), ("JPQ + split dropout 0.1", 0.1, False),
                                  ("JPQ + split dropout + degree scale", 0.1, True)):
        table = JPQEmbedding(codes, a.ksub, a.d, split_dropout=dropout).train()
        if scaled:
            table.set_row_scale(torch.rand(a.rows))
        jopt = torch.optim.Adam(table.parameters(), lr=1e-3)

        def jpq_step(table=table, jopt=jopt):
            loss = table.weight.square().sum()
            jopt.zero_grad()
            loss.backward()
            jopt.step()
            table.invalidate_cache()  # the sub-embeddings changed: the next step decodes again

        ms = cpu_ms(jpq_step, a.reps)
        print(f"{name:<34} {ms:8.2f} {ms / base:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

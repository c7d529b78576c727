"""``urecjpq bench-scale``: plain-torch BPR with and without jpq on synthetic data, 10^4..10^7 IDs.

    urecjpq bench-scale                                  # sizes 1e4,1e5,1e6,1e7 users = items, d=64, M=8
    urecjpq bench-scale --sizes 1e6 --memory-budget 12G  # one size; skip runs estimated over 12 GiB

Per size, the uncompressed run (``nn.Embedding(sparse=True)`` + ``SparseAdam``) and the jpq run
(SVD codes + ``Adam`` on the codebooks) each run in their own subprocess on the same generated data
(:mod:`.synthetic`, same seed) and report ID-table parameters and bytes, optimizer-state bytes,
checkpoint bytes, peak RSS, code-assignment time, median training-step time and held-out
recall@20 (next to a popularity ranking, to show the structure is learnt), then the jpq/base ratios.
A run whose estimated memory exceeds ``--memory-budget`` is reported as not fitting, with the
estimate, instead of being started. Results folder and resume rule as in ``urecjpq bench``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from urecjpq_plugin.cli_parser import ArgumentParser
from urecjpq_plugin.config import JPQConfig, JPQConfigError, auto_M
from urecjpq_bench.hosts import exit_on_sigterm, failure_reason, run_in_subprocess
from urecjpq_bench.store import all_runs, load_run, open_folder, save_run

GiB = 1 << 30
PROCESS_OVERHEAD = 600 << 20  # interpreter + torch + evaluation buffers, measured ~0.5 GiB


def _size(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise JPQConfigError(f"--sizes entry {text!r} is not a number (e.g. 1e6)") from None
    if value < 100 or not value.is_integer():
        raise JPQConfigError(f"--sizes entry {text!r} is invalid; use whole numbers >= 100")
    return int(value)


def _bytes_arg(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": GiB, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(float(t))
    except ValueError:
        raise JPQConfigError(f"--memory-budget {text!r} is not a size (e.g. 12G, 4096M)") from None


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GiB


def per_user_for(size: int) -> int:
    """~10 interactions per user; 5 from 10^7 users on, so 10^7 stays ~5*10^7 pairs (~0.4 GB)."""
    return 10 if size < 10**7 else 5


def estimate_bytes(variant: str, size: int, d: int, per_user: int) -> int:
    """Peak memory estimate: data + tables for the baseline (weights, two Adam moments, one transient
    copy while the checkpoint is written: 4x; measured 2.7 GB at 10^6 vs 2.8 GB estimated), SVD work for jpq."""
    nnz = size * per_user
    data = 8 * nnz + 40 * size  # items + csr copy during generation; indptr, clusters, popularity
    if variant == "base":
        return PROCESS_OVERHEAD + data + 4 * 2 * size * d * 4
    return PROCESS_OVERHEAD + data + 6 * size * 16 * 4  # ~6 live [N, k+oversample] float32 in the SVD


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="urecjpq bench-scale", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1e4,1e5,1e6,1e7", help="users = items per size (default 1e4,1e5,1e6,1e7)")
    p.add_argument("--variants", default="base,jpq", help="base, jpq or both (default both)")
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--M", default="auto", help="splits per code, or auto (the plugin's default: d / 4)")
    p.add_argument("--ksub", type=int, default=256)
    p.add_argument("--per-user", type=int, default=None, help="draws per user (default 10; 5 from 10^7 users)")
    p.add_argument("--clusters", type=int, default=128, help="latent clusters of the generator (default 128)")
    p.add_argument("--epochs", type=float, default=5.0, help="passes over the training pairs (default 5)")
    p.add_argument("--max-steps", type=int, default=1000, help="cap on training steps per run (default 1000)")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1: comparable on a busy machine)")
    p.add_argument("--eval-users", type=int, default=500, help="test users ranked over the full catalogue")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-budget", default=None,
                   help="skip runs estimated above this (e.g. 12G; default 80%% of MemAvailable at start)")
    p.add_argument("--out", default="bench-scale-results")
    return p.parse_args(argv)


def plan(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    if str(args.M).lower() == "auto":
        args.M = auto_M(args.d)
    else:
        try:
            args.M = int(args.M)
        except ValueError:
            raise JPQConfigError(f"--M {args.M!r} is not an integer or auto") from None
    JPQConfig(M=args.M, ksub=args.ksub).check_dim(args.d, "--d")
    for flag in ("d", "threads", "batch", "max_steps", "eval_users", "clusters"):  # counts: 1 or more
        if getattr(args, flag) < 1:
            raise JPQConfigError(f"--{flag.replace('_', '-')} {getattr(args, flag)} is invalid; it must be 1 or more")
    for flag in ("epochs", "lr"):
        if not getattr(args, flag) > 0:
            raise JPQConfigError(f"--{flag} {getattr(args, flag)} is invalid; it must be above 0")
    if args.per_user is not None and args.per_user < 1:
        raise JPQConfigError(f"--per-user {args.per_user} is invalid; it must be 1 or more")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in ("base", "jpq")]
    if bad or not variants:
        raise JPQConfigError(f"--variants {args.variants!r} is invalid; valid: base, jpq")
    settings = {k: getattr(args, k) for k in ("d", "M", "ksub", "per_user", "clusters", "epochs", "max_steps",
                                              "batch", "lr", "threads", "eval_users", "seed")}
    specs = []
    for size in [_size(s) for s in args.sizes.split(",") if s.strip()]:
        per_user = args.per_user or per_user_for(size)
        for variant in variants:
            specs.append({**settings, "run_id": f"{size:.0e}-{variant}".replace("+0", ""), "size": size,
                          "variant": variant, "per_user": per_user})
    return settings, specs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    exit_on_sigterm()
    settings, specs = plan(args)
    budget = _bytes_arg(args.memory_budget) if args.memory_budget else int(0.8 * available_memory())
    out = Path(args.out).expanduser()
    runs = open_folder(out, settings)
    failed: list[tuple[str, str]] = []
    for spec in specs:
        done = load_run(runs, spec["run_id"])
        if done and done.get("status") in ("ok", "does not fit"):
            print(f"{spec['run_id']}: already measured", file=sys.stderr)
            continue
        estimate = estimate_bytes(spec["variant"], spec["size"], spec["d"], spec["per_user"])
        if estimate > budget:
            record = {"run_id": spec["run_id"], "spec": spec, "status": "does not fit", "estimate_bytes": estimate,
                      "budget_bytes": budget}
            print(f"{spec['run_id']}: does not fit (estimated {estimate / GiB:.1f} GiB > budget "
                  f"{budget / GiB:.1f} GiB)", file=sys.stderr)
        else:
            print(f"{spec['run_id']}: running (estimated {estimate / GiB:.2f} GiB)", file=sys.stderr)
            run_dir = runs / spec["run_id"]
            full = {**spec, "out_dir": str(run_dir.resolve())}
            threads = str(spec["threads"])  # BLAS too: spinning pools distort timings on a busy machine
            env = {k: threads for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
            result = run_in_subprocess(full, run_dir, module="urecjpq_bench.scale_child", env=env)
            record = {"run_id": spec["run_id"], "spec": spec, "estimate_bytes": estimate, **result}
            if record["status"] != "ok":
                failed.append((spec["run_id"], failure_reason(record["error"])))
                print(f"{spec['run_id']}: failed: {failed[-1][1]} (log: {run_dir}/child.log)", file=sys.stderr)
        save_run(runs, record)
        write_scale_report(all_runs(runs), out)
    print(write_scale_report(all_runs(runs), out))
    if failed:
        print(f"urecjpq bench-scale: {len(failed)} run(s) failed; rerun the same command to retry them:",
              file=sys.stderr)
        for run_id, reason in failed:
            print(f"  {run_id}: {reason}", file=sys.stderr)
        return 1
    return 0


# -- report -----------------------------------------------------------------------------------
ROWS = (
    ("ID-table trainable parameters", "id_params", "int"),
    ("ID-table bytes (weights + codes)", "id_bytes", "bytes"),
    ("optimizer-state bytes", "optimizer_bytes", "bytes"),
    ("checkpoint bytes", "checkpoint_bytes", "bytes"),
    ("peak RSS", "peak_rss_bytes", "bytes"),
    ("code assignment (s)", "code_seconds", "sec"),
    ("training step, median (ms)", "step_ms_median", "ms"),
    ("training steps x batch", "steps", "int"),
    ("held-out recall@20", "recall@20", "float"),
    ("popularity recall@20 (same users)", "popularity_recall@20", "float"),
)


def _fmt(value, kind: str) -> str:
    if value in (None, ""):
        return "-"
    if kind == "bytes":
        for unit, size in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size:
                return f"{value / size:.2f} {unit}"
        return f"{value} B"
    if kind == "int":
        return f"{int(value):,}"
    if kind in ("sec", "ms"):
        return f"{value:.2f}"
    return f"{value:.4f}"


def write_scale_report(records: list[dict], out: Path) -> str:
    """``scale.md``: one table per size, base | jpq | jpq/base; also returned."""
    by_size: dict[int, dict] = {}
    for r in records:
        by_size.setdefault(r["spec"]["size"], {})[r["spec"]["variant"]] = r
    lines = []
    for size in sorted(by_size):
        base, jpq = by_size[size].get("base"), by_size[size].get("jpq")
        any_run = jpq or base
        s = any_run["spec"]
        nnz = next((r.get("nnz") for r in (jpq, base) if r and r.get("nnz")), None)
        lines += [f"#### {size:,} users x {size:,} items, d={s['d']}, M={s['M']}, ksub={s['ksub']}"
                  + (f", {nnz:,} training pairs" if nnz else ""), "",
                  "| measure | uncompressed | jpq | jpq / uncompressed |", "|---|---|---|---|"]

        def cell(r, key, kind):
            if r is None:
                return "not run"
            if r.get("status") == "does not fit":
                return f"does not fit (est. {r['estimate_bytes'] / GiB:.1f} GiB > {r['budget_bytes'] / GiB:.1f} GiB)" \
                    if key == "peak_rss_bytes" else "-"
            if r.get("status") != "ok":
                return "failed"
            return _fmt(r.get(key), kind)

        for label, key, kind in ROWS:
            ratio = ""
            if base and jpq and base.get("status") == jpq.get("status") == "ok" and base.get(key) and jpq.get(key) is not None \
                    and kind not in ("float",):
                ratio = f"{jpq[key] / base[key]:.4g}"
            if key == "steps":
                ratio = ""
                fmt = lambda r: cell(r, key, kind) if not r or r.get("status") != "ok" else f"{r['steps']:,} x {r['batch']}"
                lines.append(f"| {label} | {fmt(base)} | {fmt(jpq)} | |")
                continue
            lines.append(f"| {label} | {cell(base, key, kind)} | {cell(jpq, key, kind)} | {ratio} |")
        lines.append("")
    text = "\n".join(lines)
    (out / "scale.md").write_text(text)
    return text


if __name__ == "__main__":
    raise SystemExit(main())

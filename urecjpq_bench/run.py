"""``urecjpq bench``: train each model with and without jpq under the same seed, config and budget.

    urecjpq bench                                   # RecBole, ml-100k, BPR LightGCN NGCF SGL SimpleX
    urecjpq bench --M 2,4,8,16,32 --ksub 16,64,256  # one jpq run per combination (plus one base per model)
    urecjpq bench --seeds 2020,2021,2022          # every cell once per seed; tables show mean +- std
    urecjpq bench --budget recbole                # RecBole's own training defaults (300 epochs, lr 0.001, ...)
    urecjpq bench --host mmrec --models FREEDOM,LATTICE --mmrec-src ~/MMRec --dataset ml100k-mm
    urecjpq bench --codes-from-base               # codes from k-means of each seed's trained uncompressed model

Sweep options take comma-separated values; ``--targets`` values join tables with ``+``
(``--targets user+item,item``). Every run is its own subprocess; results go to ``--out`` (see
:mod:`.store` for the layout and the resume rule: rerunning the same command resumes).
"""

from __future__ import annotations

import argparse
import ast
import itertools
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from urecjpq_plugin.cli_parser import ArgumentParser
from urecjpq_plugin.config import AUTO, JPQConfig, JPQConfigError, parse_list
from urecjpq_bench.hosts import HOST_RUNNERS, check_runner_exists, exit_on_sigterm, failure_reason, run_in_subprocess
from urecjpq_bench.report import write_reports
from urecjpq_bench.store import all_runs, load_run, open_folder, save_run

DEFAULT_MODELS = {"recbole": "BPR,LightGCN,NGCF,SGL,SimpleX", "mmrec": "FREEDOM,LATTICE"}
DEFAULT_DATASET = {"recbole": "ml-100k", "mmrec": None}
# The budget stated in docs/benchmarks.md (ml-100k table). RecBole's own default (300 epochs, patience 10,
# batch 2048, lr 0.001) takes hours for five models on a laptop CPU; a larger batch and learning rate converge in
# tens of epochs. Both variants of a model always get the same budget; override with --epochs/--set.
DEFAULT_EPOCHS = 30
DEFAULT_STOPPING_STEP = 5
DEFAULT_SET = {"recbole": {"train_batch_size": 4096, "learning_rate": 0.005}, "mmrec": {}}
# --budget: "short" is the budget above; "host" trains as a user who only adds `jpq: true` would,
# under the host's own defaults (RecBole: 300 epochs, lr 0.001, batch 2048, early stopping after 10).
BUDGETS = ("short", "host")
# --codes-from-base: the code-assignment slot of those runs' ids and records (jpq_codes_from = the same seed's
# uncompressed run's checkpoint, so the compressed run waits for that run).
CODES_FROM_BASE = "codes_from_base"


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise JPQConfigError(f"{flag} {text!r} is not a comma-separated list of integers") from None


def _M_values(text: str) -> list:
    """--M: integers and/or ``auto`` (d / 4 per model, see config.auto_M)."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    return [AUTO if v.lower() == AUTO else _ints(v, "--M")[0] for v in values]


def _set_pairs(pairs: Sequence[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise JPQConfigError(f"--set {pair!r} is not key=value")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="urecjpq bench", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="recbole", help=f"one of {', '.join(HOST_RUNNERS)} (default recbole)")
    p.add_argument("--models", default=None, help="comma-separated (default: recbole BPR,LightGCN,NGCF,SGL,SimpleX)")
    p.add_argument("--dataset", default=None, help="dataset name (default: recbole ml-100k)")
    p.add_argument("--M", default=None, help="jpq_M values, e.g. 4,8,16,auto (default: the plugin's default jpq_M)")
    p.add_argument("--ksub", default="256", help="jpq_ksub values (default 256)")
    p.add_argument("--code-assign", default=JPQConfig.code_assign,
                   help=f"jpq_code_assign values (default {JPQConfig.code_assign})")
    p.add_argument("--targets", default="user+item", help="jpq_targets values, tables joined by + (default user+item)")
    p.add_argument("--codes-from-base", action="store_true",
                   help="each compressed run takes its codes from the same seed's uncompressed run's checkpoint "
                   "(jpq_codes_from: k-means of its trained rows), which then runs first")
    p.add_argument("--budget", default="short", choices=BUDGETS,
                   help="short (default): the epochs/patience/--set below; host: the host's own training defaults")
    p.add_argument("--epochs", type=int, default=None, help=f"epoch cap per run (short budget: {DEFAULT_EPOCHS})")
    p.add_argument("--stopping-step", type=int, default=None,
                   help=f"early-stopping patience in evaluations (short budget: {DEFAULT_STOPPING_STEP})")
    p.add_argument("--seeds", default="2020", help="comma-separated seeds; every run once per seed (default 2020)")
    p.add_argument("--seed", dest="seeds", type=str, help=argparse.SUPPRESS)  # the old single-seed flag
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra host config for every run (repeatable), e.g. --set learning_rate=0.002 "
                   f"(recbole defaults: {DEFAULT_SET['recbole']})")
    p.add_argument("--data-path", default=None,
                   help="folder holding <dataset>/ (RecBole atomic files, or MMRec's pre-split <dataset>.inter, "
                   "whose own train/valid/test split is kept)")
    p.add_argument("--out", default="bench-results", help="results folder (default bench-results/)")
    p.add_argument("--mmrec-src", default=None, help="MMRec checkout (its src/ folder), for --host mmrec")
    p.add_argument("--python", default=None, help="interpreter for the runs (default: this one)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch/BLAS threads per run (default: torch's; 1 keeps timings stable on a busy machine)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each its own process (default 1; timings are only comparable at 1 "
                   "or with --threads so that jobs x threads <= cores)")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a run is killed and marked failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def plan(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Settings shared by all runs (checked on resume), and one spec per run."""
    if args.host not in HOST_RUNNERS:
        raise JPQConfigError(f"--host {args.host!r} is unknown; valid: {', '.join(HOST_RUNNERS)}")
    dataset = args.dataset or DEFAULT_DATASET[args.host]
    if not dataset:
        raise JPQConfigError(f"--host {args.host} needs --dataset (e.g. the folder `urecjpq mmrec-data` makes)")
    if args.host == "mmrec" and not args.mmrec_src:
        raise JPQConfigError("--host mmrec needs --mmrec-src (the MMRec checkout's src/ folder)")
    check_runner_exists(args.host)
    if args.timeout is not None and not args.timeout > 0:
        raise JPQConfigError(f"--timeout {args.timeout} is invalid; it must be above 0 seconds")
    if args.threads is not None and args.threads < 1:
        raise JPQConfigError(f"--threads {args.threads} is invalid; it must be 1 or more (threads per run)")
    if args.jobs < 1:
        raise JPQConfigError(f"--jobs {args.jobs} is invalid; it must be 1 or more")
    models = [m.strip() for m in (args.models or DEFAULT_MODELS[args.host]).split(",") if m.strip()]
    if len(set(models)) != len(models):
        repeated = sorted({m for m in models if models.count(m) > 1})
        print(f"urecjpq bench: --models names {', '.join(repeated)} more than once; each runs once", file=sys.stderr)
        models = list(dict.fromkeys(models))
    if not models:
        raise JPQConfigError("--models is empty; give comma-separated model names")
    seeds = _ints(args.seeds, "--seeds")
    if not seeds or len(set(seeds)) != len(seeds):
        raise JPQConfigError(f"--seeds {args.seeds!r} must list distinct integers, e.g. 2020,2021,2022")
    if args.budget == "short":
        epochs = DEFAULT_EPOCHS if args.epochs is None else args.epochs
        stopping = DEFAULT_STOPPING_STEP if args.stopping_step is None else args.stopping_step
        budget = {"epochs": epochs, "stopping_step": stopping, **DEFAULT_SET[args.host]}
    else:  # the host's own defaults; --epochs/--stopping-step/--set still override where given
        budget = {k: v for k, v in (("epochs", args.epochs), ("stopping_step", args.stopping_step)) if v is not None}
    for flag, value in (("--epochs", budget.get("epochs")), ("--stopping-step", budget.get("stopping_step"))):
        if value is not None and value < 1:
            raise JPQConfigError(f"{flag} {value} is invalid; it must be 1 or more")
    budget.update(_set_pairs(args.set))
    if args.data_path:
        budget["data_path"] = str(Path(args.data_path).expanduser().resolve())
    settings = {"host": args.host, "dataset": dataset, "budget": args.budget, "set": budget, "threads": args.threads}
    grid = []
    if args.codes_from_base and parse_list(args.code_assign) != (AUTO,):
        raise JPQConfigError(f"--codes-from-base takes the codes from the uncompressed runs; --code-assign "
                             f"{args.code_assign} would choose them too: give one of them")
    for M, ksub, code, targets in itertools.product(
        _M_values(args.M or str(JPQConfig.M)), _ints(args.ksub, "--ksub"), parse_list(args.code_assign),
        [tuple(t.split("+")) for t in parse_list(args.targets)],
    ):
        grid.append(JPQConfig(M=M, ksub=ksub, code_assign=code, targets=targets))  # checks values
    if not grid:
        raise JPQConfigError("--M, --ksub, --code-assign and --targets each need at least one value")
    if args.host == "recbole":
        _check_recbole(models, dataset, budget, grid)
    options = {"mmrec_src": args.mmrec_src} if args.host == "mmrec" else {}
    data = _presplit(args.host, dataset, budget.get("data_path"), Path(args.out).expanduser())
    specs = []
    for seed in seeds:
        for model in models:
            specs.append(_spec(args.host, model, dataset, {**budget, **data, "seed": seed, "jpq": False}, options,
                               None, seed))
            base_id = specs[-1]["run_id"]
            for cfg in grid:
                code = CODES_FROM_BASE if args.codes_from_base else cfg.code_assign
                jpq = {"M": cfg.M, "ksub": cfg.ksub, "code_assign": code, "targets": list(cfg.targets)}
                over = {**budget, **data, "seed": seed, "jpq": True, "jpq_M": cfg.M, "jpq_ksub": cfg.ksub,
                        "jpq_targets": list(cfg.targets)}
                if not args.codes_from_base:
                    over["jpq_code_assign"] = cfg.code_assign
                spec = _spec(args.host, model, dataset, over, options, jpq, seed)
                specs.append({**spec, "codes_from_run": base_id} if args.codes_from_base else spec)
    return settings, specs


def _presplit(host: str, dataset: str, data_path: str | None, out: Path) -> dict:
    """RecBole on an MMRec-format dataset reads a copy under ``<out>/data`` that keeps the file's split
    (written by :func:`main` once the folder is checked)."""
    from urecjpq_plugin.data.presplit import mmrec_inter_file, presplit_overrides

    if host != "recbole" or not mmrec_inter_file(dataset, data_path):
        return {}
    return presplit_overrides((out / "data").resolve())


def _check_recbole(models: list[str], dataset: str, budget: dict, grid: list[JPQConfig]) -> None:
    """Every model name, the dataset and every M against each model's embedding size, before any run."""
    from urecjpq_plugin.hosts.recbole.names import check_dataset, check_model, model_embedding_size

    for model in models:
        check_model(model)
    check_dataset(dataset, budget.get("data_path"))
    for model in models:
        dim = budget.get("embedding_size") or model_embedding_size(model)
        for cfg in grid:
            if dim:
                cfg.check_dim(int(dim), f"{model}'s embedding tables")


def _spec(host: str, model: str, dataset: str, overrides: dict, options: dict, jpq: dict | None, seed: int) -> dict:
    run_id = f"{model}-base" if jpq is None else (
        f"{model}-jpq-M{jpq['M']}-k{jpq['ksub']}-{jpq['code_assign']}-{'+'.join(jpq['targets'])}")
    return {"run_id": f"{run_id}-s{seed}", "host": host, "model": model, "dataset": dataset, "seed": seed,
            "overrides": overrides, "options": options, "jpq": jpq}


class BaseRunMissing(JPQConfigError):
    """A --codes-from-base run whose uncompressed run failed or kept no checkpoint."""


def _with_base_codes(spec: dict, runs: Path, finished: dict, interrupted: threading.Event) -> dict:
    """``spec`` with ``jpq_codes_from`` = the checkpoint of the uncompressed run it names (once that finished)."""
    base_id = spec.get("codes_from_run")
    if base_id is None:
        return spec
    while not finished[base_id].wait(1.0):
        if interrupted.is_set():
            raise BaseRunMissing(f"interrupted before {base_id} finished")
    base = load_run(runs, base_id) or {}
    checkpoint = base.get("checkpoint")
    if base.get("status") != "ok":
        raise BaseRunMissing(f"--codes-from-base: the uncompressed run {base_id} failed; rerun the command to retry both")
    if not checkpoint or not Path(checkpoint).is_file():
        raise BaseRunMissing(f"--codes-from-base: the uncompressed run {base_id} kept no checkpoint (record: "
                             f"{checkpoint!r}); delete {runs / (base_id + '.json')} and rerun the command to train it again")
    return {**spec, "overrides": {**spec["overrides"], "jpq_codes_from": checkpoint}}


def _title(settings: dict, seeds: list[int]) -> str:
    budget = dict(settings["set"])
    if settings["budget"] == "short":
        head = (f"at most {budget.pop('epochs')} epochs, early stopping after {budget.pop('stopping_step')} "
                "evaluations without gain")
    else:
        head = f"{settings['host']}'s own training defaults"
    extra = ", ".join(f"{k}={v}" for k, v in budget.items())
    return (f"{settings['host']} {settings['dataset']}: {head}" + (f", {extra}" if extra else "")
            + f", seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
            + (f", {settings['threads']} thread(s) per run" if settings.get("threads") else ""))


def _progress(total: int, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="bench", unit="run", disable=disable, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    exit_on_sigterm()
    settings, specs = plan(args)
    seeds = sorted({s["seed"] for s in specs})
    out = Path(args.out).expanduser()
    runs = open_folder(out, settings)
    if "benchmark_filename" in specs[0]["overrides"]:
        from urecjpq_plugin.data.presplit import recbole_presplit

        recbole_presplit(settings["dataset"], settings["set"]["data_path"], cache=out / "data")
    done = {s["run_id"] for s in specs if (load_run(runs, s["run_id"]) or {}).get("status") == "ok"}
    # uncompressed runs first: a --codes-from-base run waits for its seed's (no deadlock: its base started before)
    todo = sorted((s for s in specs if s["run_id"] not in done), key=lambda s: "codes_from_run" in s)
    finished = {s["run_id"]: threading.Event() for s in specs}
    for run_id in done:
        finished[run_id].set()
    print(f"urecjpq bench: {len(specs)} runs in {out}/ ({len(done)} already finished, {len(todo)} to run)",
          file=sys.stderr)
    env = None
    if args.threads:  # torch reads these at start-up; spinning thread pools on a shared CPU cost 10-80x
        env = {k: str(args.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    failed: list[tuple[str, str]] = []
    interrupted = threading.Event()
    lock = threading.Lock()  # one writer of reports and the progress bar at a time

    def run_spec(spec: dict) -> None:
        run_dir = runs / spec["run_id"]
        spec = {**spec, "out_dir": str(run_dir.resolve())}
        try:
            try:
                spec = _with_base_codes(spec, runs, finished, interrupted)
                result = run_in_subprocess(spec, run_dir, timeout=args.timeout, python=args.python, env=env)
            except BaseRunMissing as err:
                result = {"status": "failed", "error": str(err)}
            if interrupted.is_set():  # the run got the same Ctrl-C: not its failure; a rerun resumes it
                return
            record = {"run_id": spec["run_id"], "spec": spec, "jpq": spec["jpq"], **result}
            save_run(runs, record)
        finally:  # a run waiting for this one reads its record now
            finished[spec["run_id"]].set()
        with lock:
            if record["status"] != "ok":
                failed.append((spec["run_id"], failure_reason(record["error"])))
                bar.write(f"run {spec['run_id']} failed: {failed[-1][1]} (log: {run_dir}/child.log)")
            write_reports(all_runs(runs), out, title=_title(settings, seeds))
            bar.set_postfix_str(spec["run_id"])
            bar.update(1)

    with _progress(len(specs), args.no_progress) as bar:
        bar.update(len(done))
        # Each run is its own subprocess; --jobs of them at a time (threads only wait on children).
        pool = ThreadPoolExecutor(max_workers=args.jobs)
        try:
            for future in [pool.submit(run_spec, spec) for spec in todo]:
                future.result()
        except KeyboardInterrupt:
            interrupted.set()
        finally:  # stopped (SIGTERM, Ctrl-C): start no queued run; a rerun resumes them
            pool.shutdown(wait=True, cancel_futures=True)
    if interrupted.is_set():
        write_reports(all_runs(runs), out, title=_title(settings, seeds))
        print(f"urecjpq bench: interrupted; rerun the same command to resume ({out}/)", file=sys.stderr)
        return 130
    paths = write_reports(all_runs(runs), out, title=_title(settings, seeds))
    print((out / "results.md").read_text())
    print(f"outputs: {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    if failed:
        print(f"urecjpq bench: {len(failed)} run(s) failed; rerun the same command to retry them:", file=sys.stderr)
        for run_id, reason in failed:
            print(f"  {run_id}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

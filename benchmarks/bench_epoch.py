"""Per-epoch time in RecBole, JPQ-compressed vs uncompressed, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_epoch.py [--models BPR,LightGCN,NGCF,SGL,SimpleX]
        [--dataset ml-100k] [--epochs 4] [--repeats 1] [--profile MODEL]

Per model, one process builds both variants with the same settings (``--epochs`` epochs, batch
4096, lr 0.005, full-sort MRR@10 validation after every epoch) and runs their epochs interleaved,
as ``trainer.fit`` would (``_train_epoch`` then ``_valid_epoch``), reporting median seconds of each. ``--profile MODEL`` instead runs one compressed and one
uncompressed training epoch of MODEL under cProfile and prints the top functions by own time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = ("BPR", "LightGCN", "NGCF", "SGL", "SimpleX")


def _settings(epochs: int) -> dict:
    return {
        "epochs": epochs,
        "train_batch_size": 4096,
        "learning_rate": 0.005,
        "eval_step": 1,
        "stopping_step": 10**6,
        "show_progress": False,
        "topk": [10],
        "valid_metric": "MRR@10",
        "metrics": ["Recall", "MRR", "NDCG"],
        "state": "WARNING",
        "save_dataset": False,
        "save_dataloaders": False,
    }


def _timed(seconds: dict, phase: str, call, *args, **kwargs):
    start, cpu_start = time.perf_counter(), time.process_time()
    result = call(*args, **kwargs)
    seconds[phase].append(time.perf_counter() - start)
    seconds[f"{phase}_cpu"].append(time.process_time() - cpu_start)
    return result


def build(model_name: str, dataset: str, jpq: bool, epochs: int):
    """RecBole's ``run_recbole`` steps up to the trainer, with the plugin active."""
    from urecjpq_bench.recbole_runner import build_trainer

    _, _, trainer, (train_data, valid_data, _) = build_trainer(model_name, dataset, {**_settings(epochs), "jpq": jpq})
    return trainer, train_data, valid_data


def child(model_name: str, dataset: str, epochs: int) -> dict:
    """Both variants in one process, epochs interleaved (plain, JPQ, JPQ, plain, ...): load from
    other jobs on the machine then falls on both alike."""
    runs = {jpq: build(model_name, dataset, jpq, epochs) for jpq in (False, True)}
    times = {jpq: {key: [] for key in ("train", "valid", "train_cpu", "valid_cpu")} for jpq in runs}
    mrr = {}
    for trainer, train_data, _ in runs.values():  # what ``trainer.fit`` does before its epochs
        trainer.eval_collector.data_collect(train_data)
        if trainer.config["train_neg_sample_args"].get("dynamic", False):
            train_data.get_model(trainer.model)
    for epoch in range(epochs):
        for jpq in (False, True) if epoch % 2 == 0 else (True, False):
            trainer, train_data, valid_data = runs[jpq]
            _timed(times[jpq], "train", trainer._train_epoch, train_data, epoch, show_progress=False)
            _, result = _timed(times[jpq], "valid", trainer._valid_epoch, valid_data, show_progress=False)
            mrr[jpq] = float(result["mrr@10"])
    return {("jpq" if jpq else "plain"): {**times[jpq], "mrr": [mrr[jpq]]} for jpq in runs}


def profile(model_name: str, dataset: str, top: int = 25) -> None:
    import cProfile
    import pstats

    for jpq in (False, True):
        trainer, train_data, _ = build(model_name, dataset, jpq, 1)
        trainer._train_epoch(train_data, 0, show_progress=False)  # warm-up
        prof = cProfile.Profile()
        prof.enable()
        trainer._train_epoch(train_data, 1, show_progress=False)
        prof.disable()
        print(f"=== {model_name} jpq={jpq}: one training epoch, top {top} by own time")
        pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def run_child(model_name: str, dataset: str, epochs: int) -> dict:
    cmd = [sys.executable, __file__, "--child", model_name, "--dataset", dataset, "--epochs", str(epochs)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="processes per variant (epochs pooled)")
    parser.add_argument("--profile", metavar="MODEL", help="cProfile one training epoch of MODEL instead")
    parser.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dataset, args.epochs)))
        return
    if args.profile:
        profile(args.profile, args.dataset)
        return
    print(
        f"RecBole {args.dataset}, {args.epochs} epochs x {args.repeats} run(s) per variant, batch 4096, lr 0.005, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; median seconds per epoch, CPU time "
        "(process_time; robust to other jobs on shared cores), wall-clock ratio beside it"
    )
    print("| model | train plain | train JPQ | ratio (wall) | eval plain | eval JPQ | ratio (wall) | MRR@10 plain / JPQ |")
    print("|---|---|---|---|---|---|---|---|")
    keys = ("train", "valid", "train_cpu", "valid_cpu", "mrr")
    for name in args.models.split(","):
        pooled = {variant: {key: [] for key in keys} for variant in ("plain", "jpq")}
        for _ in range(args.repeats):
            result = run_child(name, args.dataset, args.epochs)
            for variant in pooled:
                for key in keys:
                    pooled[variant][key] += result[variant][key]
        med = {v == "jpq": {k: statistics.median(x) for k, x in pooled[v].items()} for v in pooled}

        def cells(phase: str) -> str:
            plain, jpq = med[False][f"{phase}_cpu"], med[True][f"{phase}_cpu"]
            wall = med[True][phase] / med[False][phase]
            return f"{plain:.3f} | {jpq:.3f} | {jpq / plain:.2f}x ({wall:.2f}x)"

        print(
            f"| {name} | {cells('train')} | {cells('valid')} | {med[False]['mrr']:.3f} / {med[True]['mrr']:.3f} |",
            flush=True,
        )

if __name__ == "__main__":
    main()

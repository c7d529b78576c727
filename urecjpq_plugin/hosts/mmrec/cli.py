"""``urecjpq-mmrec``: MMRec's ``main.py`` with the plugin active, config overrides and checkpoints.

    cd MMRec/src && urecjpq-mmrec -m FREEDOM -d baby --jpq
    urecjpq-mmrec -m FREEDOM -d ml-100k --mmrec-src ~/MMRec/src --data_path=/data/mmrec/ --jpq --epochs=2
    urecjpq-mmrec -m FREEDOM -d ml-100k --eval-checkpoint saved/FREEDOM-ml-100k-jpq.pth

Takes MMRec's own options (``-m/--model``, ``-d/--dataset``) and any MMRec config key as
``--key=value`` (YAML value; a scalar for a grid-searched key replaces its list). A bare ``--jpq``
means ``--jpq=true``; ``jpq: true`` in MMRec's YAML files works as well. The best model is saved
to ``<checkpoint_dir>/<model>-<dataset>-<base|jpq|jpq-targets>.pth``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from urecjpq_plugin.cli_parser import ArgumentParser
from urecjpq_plugin.config import JPQConfig, URecJPQError, jpq_enabled
from urecjpq_plugin.hosts.mmrec.args import LauncherError, overrides_from_argv, parse_value

__all__ = ["LauncherError", "main", "overrides_from_argv", "parse_value"]

PROG = "urecjpq-mmrec"


def find_mmrec_src(given: str | None) -> str:
    candidates = [given] if given else [os.getcwd(), os.environ.get("MMREC_SRC")]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "main.py")) and os.path.isdir(os.path.join(path, "configs")):
            return os.path.abspath(path)
    where = repr(given) if given else f"the working directory {os.getcwd()!r}"
    raise LauncherError(f"{where} is not MMRec's src/ (it needs main.py and configs/); run from there or pass --mmrec-src PATH")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict]:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--model", "-m", type=str, default="SELFCFED_LGN", help="MMRec model name")
    parser.add_argument("--dataset", "-d", type=str, default="baby", help="MMRec dataset name")
    parser.add_argument("--mmrec-src", default=None, help="MMRec's src/ (default: the working directory)")
    parser.add_argument("--eval-checkpoint", default=None, metavar="FILE", help="evaluate a saved model, no training")
    args, rest = parser.parse_known_args(argv)
    return args, overrides_from_argv(rest)


def _summary(runs: list[dict]) -> str:
    best = max(runs, key=lambda r: r["best_valid_score"])
    test = best["test_result"]
    metrics = ", ".join(f"{k}={test[k]:.4f}" for k in ("recall@20", "ndcg@20") if k in test)
    saved = [r for r in runs if r["checkpoint"]]
    where = f"; checkpoint {saved[-1]['checkpoint']} ({saved[-1]['checkpoint_bytes']:,} bytes)" if saved else ""
    return (
        f"{PROG}: {best['model']} on {best['dataset']} ({'jpq' if best['jpq'] else 'uncompressed'}): test {metrics}; "
        f"trainable parameters {best['trainable_params']:,} (ID tables {best['id_table_params']:,}, "
        f"feature tables {best['feature_params']:,}){where}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, overrides = parse_args(argv)
        if jpq_enabled(overrides):
            JPQConfig.from_mapping(overrides)  # bad JPQ options fail before MMRec loads anything
        from urecjpq_plugin.hosts.mmrec import hook as mmrec
        from urecjpq_plugin.hosts.mmrec import runner as mmrec_run

        # paths given relative to where the user stands, before moving into MMRec's src/
        for key in ("data_path", "checkpoint_dir"):
            if isinstance(overrides.get(key), str) and os.path.isdir(overrides[key]):
                overrides[key] = os.path.abspath(overrides[key]) + os.sep
        if jpq_enabled(overrides) and isinstance(overrides.get("jpq_codes_from"), str):
            from urecjpq_plugin.checkpoint_file import check_checkpoint_path
            from urecjpq_plugin.trained_codes import WRITTEN_BY

            # a missing file stops here, before MMRec loads; the hook reads it (once) when it builds the model
            overrides["jpq_codes_from"] = check_checkpoint_path(os.path.abspath(overrides["jpq_codes_from"]), WRITTEN_BY)
        path = os.path.abspath(args.eval_checkpoint) if args.eval_checkpoint else None
        mmrec_run.use_mmrec_src(find_mmrec_src(args.mmrec_src))
        mmrec.activate()
        if path:
            result = mmrec.evaluate_checkpoint(path, overrides)
            test = result["test_result"]
            print(f"{PROG}: {path}: test " + ", ".join(f"{k}={v:.4f}" for k, v in test.items() if k.endswith("@20")))
            return 0
        from utils.quick_start import quick_start

        mmrec_run.check_model_name(args.model)
        config = mmrec_run.launch_config(args.dataset, overrides)
        first = len(mmrec_run.RUNS)
        quick_start(model=args.model, dataset=args.dataset, config_dict=config, save_model=True)
        if len(mmrec_run.RUNS) > first:
            print(_summary(mmrec_run.RUNS[first:]))
    except URecJPQError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

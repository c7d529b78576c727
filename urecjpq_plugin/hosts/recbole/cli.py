"""``urecjpq-recbole``: RecBole's ``run_recbole.py`` with the plugin active.

    urecjpq-recbole --model=LightGCN --dataset=ml-100k --jpq=True --epochs=2

Takes RecBole's own options (``--model``, ``--dataset``, ``--config_files``, ``--nproc``, ...) and
any ``--key=value`` config override; a bare ``--jpq`` means ``--jpq=True``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from urecjpq_plugin.cli_parser import ArgumentParser
from urecjpq_plugin.config import JPQConfig, JPQConfigError, URecJPQError, jpq_enabled


def shipped_data_path(dataset: str) -> str | None:
    """RecBole's wheel ships ml-100k under ``recbole/dataset_example``; use it if nothing local."""
    import recbole

    root = os.path.join(os.path.dirname(recbole.__file__), "dataset_example")
    return root if os.path.isdir(os.path.join(root, dataset)) else None


def _yaml_keys(files: Sequence[str]) -> dict:
    import yaml

    merged: dict = {}
    for path in files:
        if not os.path.isfile(path):
            raise JPQConfigError(f"--config_files entry {path!r} does not exist; give paths to RecBole YAML files")
        with open(path) as fh:
            merged.update(yaml.safe_load(fh) or {})
    return merged


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = ArgumentParser(prog="urecjpq-recbole", description=__doc__.split("\n")[0])
    parser.add_argument("--model", "-m", type=str, default="BPR", help="RecBole model name")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="RecBole dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML files")
    parser.add_argument("--nproc", type=int, default=1, help="processes for distributed training")
    parser.add_argument("--ip", type=str, default="localhost")
    parser.add_argument("--port", type=str, default="5678")
    parser.add_argument("--world_size", type=int, default=-1)
    parser.add_argument("--group_offset", type=int, default=0)
    args, rest = parser.parse_known_args(argv)
    # RecBole reads --key=value overrides from sys.argv itself; a bare --jpq is a flag.
    rest = ["--jpq=True" if a == "--jpq" else a for a in rest]
    for arg in rest:
        # RecBole drops anything else with a warning and trains on its defaults ("--epochs 5" trains 300).
        if not arg.startswith("--") or "=" not in arg or not arg[2:].split("=", 1)[0]:
            parser.error(f"argument {arg!r} is not --key=value; RecBole settings take that form, e.g. --epochs=5")
    return args, rest


def build_config_dict(args: argparse.Namespace, overrides: Sequence[str]) -> tuple[list[str] | None, dict]:
    """Check what RecBole would only reject with a traceback (or not at all), before it writes anything."""
    from urecjpq_plugin.hosts.recbole.names import check_dataset, check_model

    if args.nproc < 1:
        raise JPQConfigError(f"--nproc={args.nproc} is invalid; it must be 1 or more (processes to start)")
    check_model(args.model)
    files = args.config_files.strip().split(" ") if args.config_files else None
    from_files = _yaml_keys(files or [])
    given = {a[2:].split("=", 1)[0]: a.split("=", 1)[1] for a in overrides if a.startswith("--") and "=" in a}
    config_dict: dict = {}
    data_path = _literal(given.get("data_path", from_files.get("data_path")))
    if data_path is None and not os.path.isdir(os.path.join("dataset", args.dataset)):
        shipped = shipped_data_path(args.dataset)
        if shipped:
            config_dict["data_path"] = data_path = shipped
    check_dataset(args.dataset, data_path)
    from urecjpq_plugin.data.presplit import mmrec_inter_file, recbole_presplit

    if mmrec_inter_file(args.dataset, data_path):  # MMRec's pre-split format: keep the file's split
        config_dict.update(recbole_presplit(args.dataset, data_path))
    else:
        check_atomic_header(args.dataset, data_path)
    # Check the JPQ options before RecBole writes logs or checkpoints.
    merged = {**from_files, **given}
    if jpq_enabled(merged):
        JPQConfig.from_mapping({k: _literal(v) for k, v in merged.items()})
    return files, config_dict


ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


def check_atomic_header(dataset: str, data_path: str | None) -> None:
    """RecBole's atomic ``.inter`` header is tab-separated ``name:type``; anything else would end in a
    long traceback deep inside RecBole's loader, so name the file and what is expected first."""
    path = os.path.join(os.path.expanduser(data_path or "dataset"), dataset, f"{dataset}.inter")
    if not os.path.isfile(path):
        return  # a dataset RecBole downloads, or one without an .inter file: RecBole's own checks apply
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = fh.readline().rstrip("\r\n")
    fields = header.split("\t")
    if not all(f.count(":") == 1 and f.split(":")[1] in ATOMIC_TYPES for f in fields):
        raise JPQConfigError(
            f"{path}: header {header[:60]!r} is not RecBole's atomic format; expected tab-separated name:type "
            f"fields such as 'user_id:token<TAB>item_id:token' (types: {', '.join(ATOMIC_TYPES)})"
        )


def _literal(value):
    if not isinstance(value, str):
        return value
    import ast

    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = parse_args(argv)
    try:
        files, config_dict = build_config_dict(args, overrides)
        if "benchmark_filename" in config_dict:  # RecBole's command line would override the converted copy
            overrides = [a for a in overrides if not a.startswith("--data_path=")]
        sys.argv = [sys.argv[0], *overrides]
        from urecjpq_plugin.hosts.recbole.hook import activate, run

        activate()
        run(
            args.model,
            args.dataset,
            config_file_list=files,
            config_dict=config_dict,
            nproc=args.nproc,
            world_size=args.world_size,
            ip=args.ip,
            port=args.port,
            group_offset=args.group_offset,
        )
    except URecJPQError as err:
        _into_recbole_log(f"urecjpq-recbole: error: {err}")
        print(f"urecjpq-recbole: error: {err}", file=sys.stderr)
        return 2
    return 0


def _into_recbole_log(line: str) -> None:
    """An error raised after RecBole opened its log file ends that log too (not a log cut short)."""
    import logging

    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and handler.stream is not None and not handler.stream.closed:
            handler.acquire()
            try:
                handler.stream.write(line + "\n")
                handler.flush()
            finally:
                handler.release()


if __name__ == "__main__":
    raise SystemExit(main())

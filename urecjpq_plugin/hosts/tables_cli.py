"""``urecjpq tables``: which tables ``jpq: true`` would swap, and the parameter change, without training.

    urecjpq tables --model BPR                      # RecBole, ml-100k (the copy RecBole ships)
    urecjpq tables --model NNCF --ksub 128 --config-files my.yaml    # YAML jpq_tables honoured
    urecjpq tables --host mmrec --model FREEDOM --mmrec-src MMRec/src --data-path MMRec/data

The model is built plain on the dataset (as the host builds it, ~10 s for ml-100k), then the tables
are looked up exactly as at ``jpq: true`` (registry, YAML ``jpq_tables``, host specs, default rule).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, Iterator, Sequence

from torch import nn

from urecjpq_plugin.cli_parser import ArgumentParser
from urecjpq_plugin.config import JPQConfig, URecJPQError, parse_list
from urecjpq_plugin.inject import TableRef, count_trainable
from urecjpq_plugin.hosts.base import find_tables

HOSTS = ("recbole", "mmrec")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="urecjpq tables", description=__doc__.split("\n")[0])
    p.add_argument("--model", "-m", required=True, help="model name (RecBole's or MMRec's)")
    p.add_argument("--host", choices=HOSTS, default="recbole", help="framework (default %(default)s)")
    p.add_argument("--dataset", "-d", default="ml-100k", help="dataset (default %(default)s)")
    p.add_argument("--data-path", default=None, help="dataset folder (RecBole: default its shipped ml-100k)")
    p.add_argument("--config-files", nargs="*", default=None, help="YAML files (e.g. with jpq_tables)")
    p.add_argument("--mmrec-src", default=None, help="MMRec's src/ (MMRec host; default $MMREC_SRC or here)")
    p.add_argument("--M", default=str(JPQConfig.M), help="splits per code, or auto (default %(default)s)")
    p.add_argument("--ksub", type=int, default=JPQConfig.ksub, help="sub-ids per split (default %(default)s)")
    p.add_argument("--targets", default="user,item", help="ID tables to look for (default %(default)s)")
    return p.parse_args(argv)


@contextlib.contextmanager
def _argv_alone() -> Iterator[None]:
    """RecBole's and MMRec's configs read ``--key=value`` from ``sys.argv``; this command's are not theirs."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def plan_lines(model: nn.Module, refs: list[TableRef], source: str, jcfg: JPQConfig) -> list[str]:
    """One line per table (path, rows, dim, entity, where the match came from), then the parameter change."""
    jcfg = jcfg.for_dims(r.shape[1] for r in refs)
    params = dict(model.named_parameters(remove_duplicate=False))
    lines = [f"{'path':<40} {'rows':>8} {'dim':>5}  {'entity':<10} {'M':>3} {'ksub':>5}  from"]
    saved = 0
    for ref in refs:
        table_config = jcfg.for_table("user" if ref.entity == "user_item" else ref.entity)
        table_config.check_dim(ref.shape[1], table=ref.path)
        table_config.check_rows(ref.shape[0], table=ref.path)
        # a users-then-items table puts users and items on disjoint halves of one codebook
        ksub = 2 * table_config.ksub if ref.entity == "user_item" else table_config.ksub
        lines.append(f"{ref.path:<40} {ref.shape[0]:>8} {ref.shape[1]:>5}  {ref.entity:<10} {table_config.M:>3} "
                     f"{ksub:>5}  {source}")
        weight = params.get(f"{ref.path}.weight", params.get(ref.path))
        if weight is not None and weight.requires_grad:
            saved += ref.shape[0] * ref.shape[1] - ksub * ref.shape[1]
    before = count_trainable(model)
    after = before - saved
    lines.append(f"M={jcfg.M} ksub={jcfg.ksub}: trainable parameters {before:,} -> {after:,} "
                 f"({after / max(before, 1):.2%})")
    return lines


def recbole_model(args: argparse.Namespace, overrides: dict) -> tuple[nn.Module, Any, dict]:
    from urecjpq_plugin.hosts.recbole import hook as host
    from urecjpq_plugin.hosts.recbole.cli import shipped_data_path
    from urecjpq_plugin.hosts.recbole.names import check_dataset, check_model

    host.activate()  # RecBole 1.2.1 on today's stack; jpq stays off, so nothing is compressed
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    name = check_model(args.model)
    data_path = args.data_path or shipped_data_path(args.dataset)
    check_dataset(args.dataset, data_path)
    config_dict = {**overrides, "jpq": False, "state": "ERROR", "show_progress": False}
    if data_path:
        config_dict["data_path"] = data_path
    from urecjpq_plugin.data.presplit import mmrec_inter_file, recbole_presplit

    if mmrec_inter_file(args.dataset, data_path):  # MMRec's pre-split format, as urecjpq-recbole reads it
        config_dict.update(recbole_presplit(args.dataset, data_path))
    with _argv_alone():
        config = Config(model=name, dataset=args.dataset, config_file_list=args.config_files, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, _ = data_preparation(config, create_dataset(config))
    dataset = train_data._dataset
    model = get_model(config["model"])(config, dataset)
    return model, config, {"user": dataset.user_num, "item": dataset.item_num}


def mmrec_model(args: argparse.Namespace, overrides: dict) -> tuple[nn.Module, Any, dict]:
    import os

    from urecjpq_plugin.hosts.mmrec import hook as mmrec

    from urecjpq_plugin.hosts.mmrec import runner as mmrec_run
    from urecjpq_plugin.hosts.mmrec.cli import find_mmrec_src
    from urecjpq_plugin.hosts.mmrec.tables import entity_counts

    config_dict = dict(overrides)
    if args.data_path:
        config_dict["data_path"] = os.path.abspath(args.data_path) + os.sep
    mmrec_run.use_mmrec_src(find_mmrec_src(args.mmrec_src))
    mmrec.activate()
    from utils.configurator import Config
    from utils.utils import get_model, init_seed

    mmrec_run.check_model_name(args.model)
    config_dict = mmrec_run.launch_config(args.dataset, {**config_dict, "jpq": False})
    with _argv_alone():
        config = Config(args.model, args.dataset, config_dict)
    for key in config["hyper_parameters"] or []:  # the first combination of MMRec's grid
        if isinstance(config[key], (list, tuple)):
            config[key] = config[key][0]
    train_data, _, _ = mmrec.load_data(config)
    init_seed(config["seed"])
    model = get_model(config["model"])(config, train_data)
    return model, config, entity_counts(train_data.dataset.get_user_num(), train_data.dataset.get_item_num())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    jcfg = JPQConfig.from_mapping({"jpq_M": args.M, "jpq_ksub": args.ksub, "jpq_targets": parse_list(args.targets)})
    if jcfg.feature_targets:
        raise URecJPQError(f"--targets {list(jcfg.feature_targets)} are feature tables; this command lists ID "
                           "tables (valid: user, item)")
    overrides = {"jpq_M": args.M, "jpq_ksub": args.ksub, "jpq_targets": list(jcfg.targets)}
    if args.host == "recbole":
        model, config, counts = recbole_model(args, overrides)
        jcfg = JPQConfig.from_mapping(config)  # with YAML's jpq_table_overrides, if any
        from urecjpq_plugin.hosts.recbole.context import is_context_model, plan_lines as context_plan_lines

        if is_context_model(model):  # user/item rows inside shared token tables: one line per field
            lines = context_plan_lines(model, config, counts, jcfg)
            print(f"{args.model} on {args.dataset} ({args.host}): shared token tables, row ranges compressed or kept")
            for line in lines:
                print(line)
            return 0
        refs, source = find_tables(model, counts, jcfg.id_targets, config)
    else:
        from urecjpq_plugin.hosts.mmrec.tables import id_table_refs

        model, config, counts = mmrec_model(args, overrides)
        jcfg = JPQConfig.from_mapping(config)
        refs, source = id_table_refs(model, counts, jcfg.id_targets, config)
    print(f"{args.model} on {args.dataset} ({args.host}): {len(refs)} ID tables would be swapped")
    for line in plan_lines(model, refs, source, jcfg):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

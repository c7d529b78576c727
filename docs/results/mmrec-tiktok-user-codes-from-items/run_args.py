"""What the scripts of this folder share: their run options and one MMRec training through the bench's ``run_one``
(``--jpq`` and every plugin default unless a script patches the hook first)."""
import argparse
import json
import os

from urecjpq_plugin.hosts.mmrec import hook


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--mmrec-src", required=True, help="MMRec's src/")
    parser.add_argument("--data-path", required=True, help="the folder holding <dataset>/")
    parser.add_argument("--seed", type=int, required=True, help="the training seed (the bench's --seeds)")
    parser.add_argument("--out", required=True, help="folder for the run's checkpoint")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="extra MMRec config (repeatable)")


def run(args: argparse.Namespace, **config) -> dict:
    """Train ``args.model`` compressed on ``args.dataset``; returns the bench's run record."""
    overrides = {"data_path": os.path.abspath(args.data_path) + os.sep, "jpq": True, "seed": args.seed, **config}
    for pair in args.set:
        key, value = pair.split("=", 1)
        overrides[key] = json.loads(value)
    return hook.run_one(args.model, args.dataset, overrides, args.out, os.path.abspath(args.mmrec_src))

"""One MMRec training through the bench's ``run_one`` (seventeenth round; see README.md): uncompressed, or
compressed with every plugin default except that the codes come from another model's trained checkpoint.

    OMP_NUM_THREADS=1 <MMRec venv python> train.py --model LightGCN --seed 999 --mmrec-src <MMRec>/src --data-path ../shared/datasets --out <scratch>/LightGCN-999
    OMP_NUM_THREADS=1 <MMRec venv python> train.py --model FREEDOM --seed 999 --codes-from <scratch>/LightGCN-999/LightGCN-tiktok-base.pth \
        --source-tables embedding_dict.user_emb,embedding_dict.item_emb --mmrec-src <MMRec>/src --data-path ../shared/datasets --out <scratch>/FREEDOM-999

``jpq_codes_from`` reads the tables under the compressed model's own names (``user_embedding.weight``,
``item_id_embedding.weight`` for FREEDOM, BM3 and MGCN), so ``--source-tables`` copies the source's user and item
tables under those names into ``<out>/codes-source.pth`` first. Prints one JSON line: the bench's run record.
"""
import argparse
import json
import os

import torch

from urecjpq_plugin.checkpoint_file import read_checkpoint_file
from urecjpq_plugin.hosts.mmrec import hook

TARGET_TABLES = ("user_embedding.weight", "item_id_embedding.weight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--codes-from", help="a trained uncompressed checkpoint; without it the run is uncompressed")
    parser.add_argument("--source-tables", help="user,item state-dict keys in --codes-from (default: the target's)")
    parser.add_argument("--mmrec-src", required=True)
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    overrides = {"data_path": os.path.abspath(args.data_path) + os.sep, "seed": args.seed, "jpq": bool(args.codes_from)}
    if args.codes_from:
        source = os.path.abspath(args.codes_from)
        if args.source_tables:
            state = read_checkpoint_file(source, needs=("state_dict",), weights_only=True)["state_dict"]
            os.makedirs(args.out, exist_ok=True)
            source = os.path.join(os.path.abspath(args.out), "codes-source.pth")
            keys = args.source_tables.split(",")
            torch.save({"state_dict": {target: state[key] for target, key in zip(TARGET_TABLES, keys)}}, source)
        overrides["jpq_codes_from"] = source
    torch.set_num_threads(1)
    record = hook.run_one(args.model, args.dataset, overrides, args.out, os.path.abspath(args.mmrec_src))
    print(json.dumps({"model": args.model, "seed": args.seed, "codes_from": args.codes_from,
                      "source_tables": args.source_tables, **record}, default=str))


if __name__ == "__main__":
    main()

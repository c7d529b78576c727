"""Train an MMRec model compressed from codes taken from its own trained uncompressed tables (a diagnosis).

Separates codes from training dynamics: the codes of each ID table come from per-split k-means of the trained,
uncompressed checkpoint's rows (``kmeans_codes``: the k-means ``ptq_mmrec.py`` quantises with; "oracle" codes,
which a compressed run cannot have without an uncompressed one trained first); then the model is trained from scratch with ``--jpq`` and every
other plugin default (degree scale, split dropout ...) exactly as the bench's compressed run, only the codes
differ. If it keeps its accuracy, better codes are the lever; if it loses what the SVD codes lose, the training.

    OMP_NUM_THREADS=1 python oracle_codes_mmrec.py --checkpoint <run>/MGCN-tiktok-base.pth --model MGCN \
        --dataset tiktok --mmrec-src <MMRec>/src --data-path ../../../../shared/datasets --seed 999 \
        --tables user=user_embedding.weight,item=item_id_embedding.weight --out <scratch folder>

Prints one JSON line: the codes' source and the bench's run record (``test_result``, parameters, epochs ...).
"""
import argparse
import json
import os

import torch

from urecjpq_plugin.checkpoint_file import read_checkpoint_file
from urecjpq_plugin.codes import kmeans_codes
from urecjpq_plugin.hosts.mmrec import hook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the trained, uncompressed run's checkpoint")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--mmrec-src", required=True)
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--seed", type=int, required=True, help="the training seed (the bench's --seeds)")
    parser.add_argument("--tables", required=True,
                        help="target=state_dict key pairs, comma-separated: user=user_embedding.weight,...")
    parser.add_argument("--targets", default="user,item", help="the tables compressed (jpq_targets); those "
                        "not in --tables get the bench's svd_pq_cos codes")
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ksub", type=int, default=256)
    parser.add_argument("--out", required=True, help="folder for the compressed run's checkpoint")
    args = parser.parse_args()
    if any("=" not in pair for pair in args.tables.split(",")):
        parser.error(f"--tables {args.tables}: give target=state_dict key pairs, e.g. user=user_embedding.weight")
    pairs = dict(pair.split("=", 1) for pair in args.tables.split(","))
    state = read_checkpoint_file(os.path.abspath(args.checkpoint), needs=("state_dict",), weights_only=True)["state_dict"]
    unknown = sorted(key for key in pairs.values() if key not in state)
    targets = args.targets.split(",")
    if unknown or not set(pairs) <= set(targets) <= {"user", "item"}:
        parser.error(f"--tables {args.tables} --targets {args.targets}: targets must be user/item, every --tables "
                     "target among --targets, and keys among "
                     f"{', '.join(k for k, v in state.items() if v.ndim == 2)}")
    oracle = {target: kmeans_codes(state[key].float(), args.M, args.ksub, seed=0)[0] for target, key in pairs.items()}
    computed = hook.compute_codes

    def oracle_codes(*a, **kw):  # the SVD codes for any table not given, the trained rows' codes for the rest
        return {**computed(*a, **kw), **oracle}

    hook.compute_codes = oracle_codes
    torch.set_num_threads(1)
    overrides = {"data_path": os.path.abspath(args.data_path) + os.sep, "jpq": True, "jpq_M": args.M,
                 "jpq_ksub": args.ksub, "jpq_code_assign": "svd_pq_cos", "jpq_targets": targets,
                 "seed": args.seed}
    record = hook.run_one(args.model, args.dataset, overrides, args.out, os.path.abspath(args.mmrec_src))
    print(json.dumps({"codes": {t: f"k-means of {pairs[t]} in {os.path.basename(args.checkpoint)}" if t in pairs
                                else "svd_pq_cos" for t in targets},
                      "seed": args.seed, "M": args.M, "ksub": args.ksub, **record}, default=str))


if __name__ == "__main__":
    main()

"""Post-training product quantisation of a trained, uncompressed MMRec checkpoint (a diagnosis, not a feature).

Quantises the named ID tables of a checkpoint written by the bench (``urecjpq-mmrec``) with per-split k-means
(``ProductQuantizer``: M splits x ksub centroids, no training after), writes the result beside it and evaluates
both on MMRec's valid and test splits. It says whether M x ksub codes can hold a trained model: if the quantised
model keeps its accuracy, what compressed training loses is training, not capacity.

    python ptq_mmrec.py --checkpoint <run>/MGCN-tiktok-base.pth --mmrec-src <MMRec>/src \
        --data-path ../../../../shared/datasets --tables user_embedding.weight,item_id_embedding.weight
"""
import argparse
import json
import os

import torch

from urecjpq_plugin.checkpoint_file import read_checkpoint_file
from urecjpq_plugin.hosts.mmrec.hook import evaluate_checkpoint
from urecjpq_plugin.hosts.mmrec.runner import use_mmrec_src
from urecjpq_plugin.pq import ProductQuantizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--mmrec-src", required=True)
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--tables", required=True, help="state_dict keys, comma-separated")
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ksub", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    checkpoint_path = os.path.abspath(args.checkpoint)
    data_path = os.path.abspath(args.data_path)
    checkpoint = read_checkpoint_file(checkpoint_path, needs=("state_dict", "config"), weights_only=True)
    errors = {}
    for key in args.tables.split(","):
        table = checkpoint["state_dict"][key]
        pq = ProductQuantizer(table.shape[1], args.M, args.ksub, seed=args.seed).train(table)
        checkpoint["state_dict"][key] = pq.decode(pq.encode(table)).to(table.dtype)
        errors[key] = round(pq.relative_error(table), 4)
    quantised = checkpoint_path.replace(".pth", f"-ptq-M{args.M}-k{args.ksub}-{'+'.join(args.tables.split(','))}.pth")
    torch.save(checkpoint, quantised)
    use_mmrec_src(args.mmrec_src)
    overrides = {"data_path": data_path + os.sep}
    result = {"checkpoint": os.path.basename(checkpoint_path), "M": args.M, "ksub": args.ksub,
              "tables": args.tables.split(","), "relative_error": errors,
              "trained": evaluate_checkpoint(checkpoint_path, overrides)["test_result"],
              "quantised": evaluate_checkpoint(quantised, overrides)["test_result"]}
    os.remove(quantised)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Post-training product quantisation of a trained, uncompressed MMRec checkpoint (a diagnosis, not a feature).

Quantises the named ID tables of a checkpoint written by the bench (``urecjpq-mmrec``) with per-split k-means
(``ProductQuantizer``: M splits x ksub centroids, no training after) and evaluates the trained and the quantised
model on MMRec's test split (the quantised checkpoint goes to a temporary folder). It says whether M x ksub codes can hold a trained model: if the quantised
model keeps its accuracy, what compressed training loses is training, not capacity.

    python ptq_mmrec.py --checkpoint <run>/MGCN-tiktok-base.pth --mmrec-src <MMRec>/src \
        --data-path ../../../../shared/datasets --tables user_embedding.weight,item_id_embedding.weight \
        --tables user_embedding.weight --tables item_id_embedding.weight

One JSON line per ``--tables`` set; the trained model is evaluated once for all of them.
"""
import argparse
import json
import os
import tempfile

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
    parser.add_argument("--tables", required=True, action="append",
                        help="state_dict keys quantised together, comma-separated; repeat for more sets")
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ksub", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    checkpoint_path = os.path.abspath(args.checkpoint)
    overrides = {"data_path": os.path.abspath(args.data_path) + os.sep}
    checkpoint = read_checkpoint_file(checkpoint_path, needs=("state_dict", "config"), weights_only=True)
    trained_state = checkpoint["state_dict"]
    table_sets = [keys.split(",") for keys in args.tables]
    unknown = sorted({key for keys in table_sets for key in keys} - set(trained_state))
    if unknown:
        parser.error(f"--tables {','.join(unknown)}: not in the checkpoint's state_dict; it holds "
                     f"{', '.join(k for k, v in trained_state.items() if v.ndim == 2)}")
    use_mmrec_src(args.mmrec_src)
    trained = evaluate_checkpoint(checkpoint_path, overrides)["test_result"]
    with tempfile.TemporaryDirectory() as scratch:  # the user's checkpoint folder is left as it was
        quantised_path = os.path.join(scratch, "quantised.pth")
        for keys in table_sets:
            state, errors = dict(trained_state), {}
            for key in keys:
                table = trained_state[key]
                pq = ProductQuantizer(table.shape[1], args.M, args.ksub, seed=args.seed).train(table)
                state[key] = pq.decode(pq.encode(table)).to(table.dtype)
                errors[key] = round(pq.relative_error(table), 4)
            torch.save({**checkpoint, "state_dict": state}, quantised_path)
            print(json.dumps({"checkpoint": os.path.basename(checkpoint_path), "M": args.M, "ksub": args.ksub,
                              "tables": keys, "relative_error": errors, "trained": trained,
                              "quantised": evaluate_checkpoint(quantised_path, overrides)["test_result"]}))

if __name__ == "__main__":
    main()

"""What a trained, uncompressed MMRec model's ID rows are made of (a diagnosis): least-squares R² of the trained user
and item rows from the interaction SVD's factors (rank 64 and 1,024) and from the mean of their neighbours' trained
rows (a user's items, an item's users), and the users' median training interactions.

    python trained_rows_fit.py --checkpoint <run>/MGCN-tiktok-base.pth --inter ../../../../shared/datasets/tiktok/tiktok.inter

Prints one JSON line.
"""
import argparse
import json
import os

import numpy as np
import pandas as pd
import scipy.sparse as sp

from urecjpq_plugin.checkpoint_file import read_checkpoint_file
from urecjpq_plugin.rsvd import randomized_svd


def r_squared(target: np.ndarray, inputs: np.ndarray) -> float:
    inputs = np.concatenate([inputs, np.ones((inputs.shape[0], 1), inputs.dtype)], axis=1)
    weights, *_ = np.linalg.lstsq(inputs, target, rcond=None)
    return round(float(1 - ((inputs @ weights - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum()), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--inter", required=True, help="the dataset's .inter file (MMRec's format, x_label 0 = train)")
    parser.add_argument("--user-table", default="user_embedding.weight")
    parser.add_argument("--item-table", default="item_id_embedding.weight")
    args = parser.parse_args()
    state = read_checkpoint_file(args.checkpoint, needs=("state_dict",), weights_only=True)["state_dict"]
    unknown = [key for key in (args.user_table, args.item_table) if key not in state]
    if unknown:
        parser.error(f"{', '.join(unknown)}: not in the checkpoint's state_dict; it holds "
                     f"{', '.join(k for k, v in state.items() if v.ndim == 2)}")
    users, items = state[args.user_table].float().numpy(), state[args.item_table].float().numpy()
    frame = pd.read_csv(args.inter, sep="\t")
    train = frame[frame["x_label"] == 0]
    X = sp.csr_matrix((np.ones(len(train), np.float32), (train["userID"], train["itemID"])), shape=(len(users), len(items)))
    user_degree, item_degree = np.asarray(X.sum(1)).ravel(), np.asarray(X.sum(0)).ravel()
    out = {"checkpoint": os.path.basename(args.checkpoint), "median_user_interactions": float(np.median(user_degree))}
    for rank in (64, 1024):
        U, s, Vt = randomized_svd(X, rank, 0)
        out[f"svd{rank}"] = {"user": r_squared(users, U * np.sqrt(s)), "item": r_squared(items, Vt.T * np.sqrt(s))}
    mean_of_items = sp.diags(1 / np.maximum(user_degree, 1)) @ X @ items
    mean_of_users = sp.diags(1 / np.maximum(item_degree, 1)) @ X.T @ users
    out["mean_of_neighbours"] = {"user": r_squared(users, np.asarray(mean_of_items)),
                                 "item": r_squared(items, np.asarray(mean_of_users))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

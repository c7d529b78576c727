"""How well do user / item codes from several sources fit a trained uncompressed model's rows? (a diagnosis,
seventeenth round; see README.md)

For codes ``c`` and trained rows ``W``, the best rows those codes allow are, per split, the mean of ``W``'s split
over the IDs that share a sub-id; printed is ``||W - W_best|| / ||W||`` for the raw rows and for rows scaled to unit
length (lower: the codes group IDs the trained model puts close together). Sources: k-means of the trained rows
themselves ("oracle", the floor), the plugin's ``svd_pq_cos``, k-means of the mean of each user's items' trained
rows, ``svd_pq_cos`` of the training matrix smoothed over the feature kNN graph ``X (I + beta S)`` and of ``X S``,
the mean of the items' normalised features, random codes (the ceiling).

    python code_fit.py --checkpoint <run>/FREEDOM-tiktok-base.pth --data ../shared/datasets/tiktok

Prints one line per source.
"""
import argparse
import os

import numpy as np
import scipy.sparse as sp
import torch

from urecjpq_plugin.checkpoint_file import read_checkpoint_file
from urecjpq_plugin.codes import kmeans_codes, svd_pq_codes
from fitgraph import feature_graph


def fit_error(W: np.ndarray, codes: np.ndarray, M: int = 16) -> list[float]:
    W = np.asarray(W, np.float64)
    d = W.shape[1] // M
    out = []
    for rows in (W, W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)):
        best = np.zeros_like(rows)
        for k in range(M):
            c, part = codes[:, k].astype(np.int64), rows[:, k * d:(k + 1) * d]
            sums = np.zeros((c.max() + 1, d))
            np.add.at(sums, c, part)
            best[:, k * d:(k + 1) * d] = (sums / np.maximum(np.bincount(c), 1)[:, None])[c]
        out.append(round(float(np.linalg.norm(rows - best) / np.linalg.norm(rows)), 4))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="the dataset folder (<name>.inter, image_feat.npy, text_feat.npy)")
    parser.add_argument("--user-key", default="user_embedding.weight")
    parser.add_argument("--item-key", default="item_id_embedding.weight")
    args = parser.parse_args()
    state = read_checkpoint_file(args.checkpoint, needs=("state_dict",), weights_only=True)["state_dict"]
    U, I = state[args.user_key].float().numpy(), state[args.item_key].float().numpy()
    name = os.path.basename(os.path.normpath(args.data))
    inter = np.genfromtxt(os.path.join(args.data, f"{name}.inter"), delimiter="\t", skip_header=1, dtype=np.int64)
    train = inter[inter[:, 4] == 0]
    X = sp.csr_matrix((np.ones(len(train), np.float32), (train[:, 0], train[:, 1])), shape=(len(U), len(I)))
    mean_of_items = sp.diags(1 / np.maximum(np.asarray(X.sum(1)).ravel(), 1)) @ X
    img, txt = (np.load(os.path.join(args.data, f)) for f in ("image_feat.npy", "text_feat.npy"))
    S = feature_graph(img, txt)

    def report(source, users, items=None):
        line = {"user": fit_error(U, users.numpy())}
        if items is not None:
            line["item"] = fit_error(I, items.numpy())
        print(source, line, flush=True)

    def kmeans(rows):
        return kmeans_codes(torch.from_numpy(np.asarray(rows, np.float32)), 16, 256, 0)[0]

    report("oracle", kmeans(U), kmeans(I))
    report("svd_pq_cos", *svd_pq_codes(X, 16, 256, 0, 64, unit_rows=True))
    report("mean of the user's items' trained rows", kmeans(mean_of_items @ I))
    for beta in (0.5, 1.0, 3.0):
        smoothed = (X @ (sp.identity(X.shape[1], format="csr") + beta * S)).tocsr().astype(np.float32)
        report(f"svd_pq_cos of X (I + {beta} S)", *svd_pq_codes(smoothed, 16, 256, 0, 64, unit_rows=True))
    report("svd_pq_cos of X S", *svd_pq_codes((X @ S).tocsr().astype(np.float32), 16, 256, 0, 64, unit_rows=True))
    features = np.concatenate([f / np.linalg.norm(f, axis=1, keepdims=True) for f in (img, txt)], 1)
    report("mean of the user's items' features", kmeans(mean_of_items @ features), kmeans(features))
    report("random", torch.from_numpy(np.random.default_rng(0).integers(0, 256, size=(len(U), 16))))


if __name__ == "__main__":
    main()

"""Fit LightGCN-style ID rows on a dataset's training pairs in plain PyTorch and save them as a checkpoint whose keys
name MMRec's MGCN / FREEDOM ID tables, for ``oracle_codes_mmrec.py`` (a diagnosis: can a cheap model's rows stand in
for the trained model's own?).

    python lightgcn_fit.py --inter ../../../../shared/datasets/tiktok/tiktok.inter --layers 2 --epochs 40 --out <scratch>/fit.pth

BPR loss, uniform negatives, Adam (lr 1e-3, batch 2048, L2 1e-4 on the batch's rows), Xavier-initialised 64-d rows,
seed 0, one thread; the saved rows are the propagated ones (mean over layers 0..L of the normalised adjacency).
"""
import argparse
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inter", required=True, help="MMRec .inter file (userID, itemID, x_label; 0 = training)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    frame = pd.read_csv(args.inter, sep="\t")
    n_users, n_items = frame.userID.max() + 1, frame.itemID.max() + 1
    train = frame[frame.x_label == 0]
    X = sp.csr_matrix((np.ones(len(train), np.float32), (train.userID, train.itemID)), shape=(n_users, n_items))
    users = torch.from_numpy(train.userID.values.astype(np.int64))
    items = torch.from_numpy(train.itemID.values.astype(np.int64))
    A = sp.bmat([[None, X], [X.T, None]]).tocsr()
    inv_sqrt = 1 / np.sqrt(np.maximum(np.asarray(A.sum(1)).ravel(), 1))
    A = (sp.diags(inv_sqrt) @ A @ sp.diags(inv_sqrt)).tocoo()
    adjacency = torch.sparse_coo_tensor(np.vstack([A.row, A.col]), A.data.astype(np.float32), A.shape).coalesce()
    rows = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(n_users + n_items, 64)))
    optimizer = torch.optim.Adam([rows], lr=1e-3)

    def propagated() -> torch.Tensor:
        layers = [rows]
        for _ in range(args.layers):
            layers.append(torch.sparse.mm(adjacency, layers[-1]))
        return torch.stack(layers).mean(0)

    start = time.time()
    for _ in range(args.epochs):
        order = torch.randperm(len(users))
        for first in range(0, len(order), 2048):
            batch = order[first:first + 2048]
            u, i, j = users[batch], n_users + items[batch], n_users + torch.randint(0, n_items, (len(batch),))
            out = propagated()
            loss = -torch.nn.functional.logsigmoid((out[u] * out[i]).sum(1) - (out[u] * out[j]).sum(1)).mean()
            loss = loss + 1e-4 * (rows[u].pow(2).sum() + rows[i].pow(2).sum() + rows[j].pow(2).sum()) / 2 / len(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        fitted = propagated()
    print(f"{args.epochs} epochs in {time.time() - start:.0f} s, last batch loss {loss.item():.4f}")
    torch.save({"state_dict": {"user_embedding.weight": fitted[:n_users].clone(),
                               "item_id_embedding.weight": fitted[n_users:].clone()}}, args.out)


if __name__ == "__main__":
    main()

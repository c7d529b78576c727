"""Train an MMRec model compressed with every plugin default but its codes, made before training from the training
pairs and the item features (a diagnosis, seventeenth round; see README.md):

- ``smooth``: ``svd_pq_cos`` of the training matrix smoothed over FREEDOM's feature kNN graph, ``X (I + beta S)``;
- ``randproj``: k-means of each user's mean of its items' random Gaussian vectors (``--dim`` wide; items: of their
  users'), i.e. users grouped by the items they share rather than by the SVD's leading directions;
- ``fitgraph``: per-split k-means of a LightGCN fit whose items also take ``S @ item rows`` (``fitgraph.fit_rows``).

    OMP_NUM_THREADS=1 <MMRec venv python> feature_graph_codes.py --codes fitgraph --model FREEDOM --seed 999 \
        --mmrec-src <MMRec>/src --data-path ../shared/datasets --out <scratch>

Prints one JSON line: the codes and the bench's run record.
"""
import argparse
import json
import os
import sys

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mmrec-tiktok-user-codes-from-items"))
from run_args import add_run_arguments, run  # noqa: E402

from urecjpq_plugin.codes import kmeans_codes, svd_pq_codes  # noqa: E402
from urecjpq_plugin.hosts.mmrec import hook  # noqa: E402
from fitgraph import feature_graph, fit_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--codes", required=True, choices=["smooth", "randproj", "fitgraph"])
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--dim", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = os.path.join(args.data_path, args.dataset)
    inter = np.genfromtxt(os.path.join(folder, f"{args.dataset}.inter"), delimiter="\t", skip_header=1, dtype=np.int64)
    train = inter[inter[:, 4] == 0]
    n_users, n_items = int(inter[:, 0].max()) + 1, int(inter[:, 1].max()) + 1
    X = sp.csr_matrix((np.ones(len(train), np.float32), (train[:, 0], train[:, 1])), shape=(n_users, n_items))
    if args.codes == "randproj":
        rng = np.random.default_rng(0)
        users_mean = sp.diags(1 / np.maximum(np.asarray(X.sum(1)).ravel(), 1)) @ X
        items_mean = sp.diags(1 / np.maximum(np.asarray(X.sum(0)).ravel(), 1)) @ X.T.tocsr()
        user_vectors = users_mean @ rng.standard_normal((n_items, args.dim)).astype(np.float32)
        item_vectors = items_mean @ rng.standard_normal((n_users, args.dim)).astype(np.float32)
        user, item = (kmeans_codes(torch.from_numpy(np.asarray(v, np.float32)), 16, 256, 0)[0]
                      for v in (user_vectors, item_vectors))
    else:
        S = feature_graph(*(np.load(os.path.join(folder, f)) for f in ("image_feat.npy", "text_feat.npy")))
        if args.codes == "smooth":
            smoothed = (X @ (sp.identity(n_items, format="csr") + args.beta * S)).tocsr().astype(np.float32)
            user, item = svd_pq_codes(smoothed, 16, 256, 0, 64, unit_rows=True)
        else:
            users, items = fit_rows(X, S, seed=args.seed)
            user, item = kmeans_codes(users, 16, 256, args.seed)[0], kmeans_codes(items, 16, 256, args.seed + 1)[0]
    computed = hook.compute_codes
    hook.compute_codes = lambda *a, **kw: {**computed(*a, **kw), "user": user, "item": item}
    record = run(args, jpq_code_assign="svd_pq_cos")
    print(json.dumps({"codes": args.codes, "beta": args.beta, "dim": args.dim, "seed": args.seed, **record}, default=str))


if __name__ == "__main__":
    main()

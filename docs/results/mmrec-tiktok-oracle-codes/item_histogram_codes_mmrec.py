"""Train an MMRec model compressed with user codes built from its items' codes (a diagnosis, not a feature).

Items keep the bench's ``svd_pq_cos`` codes; each user's sub-id in split ``k`` is the k-means cluster (``ksub``
clusters, ``kmeans_codes`` with one split) of the histogram of its training items' sub-ids in split ``k``, so
that users who bought items with the same sub-ids share theirs. A trained uncompressed MGCN's user rows are close to
the mean of their items' rows, and the trained rows' codes help compressed training most on the user side
(``oracle_codes_mmrec.py``); this asks whether codes built that way before training carry the same. Every other
plugin default is the bench's.

    OMP_NUM_THREADS=1 python item_histogram_codes_mmrec.py --model MGCN --dataset tiktok --mmrec-src <MMRec>/src \
        --data-path ../../../../shared/datasets --seed 999 --out <scratch folder>

Prints one JSON line: the bench's run record (``test_result``, parameters, epochs ...).
"""
import argparse
import json
import os

import numpy as np
import scipy.sparse as sp
import torch

from urecjpq_plugin.codes import kmeans_codes
from urecjpq_plugin.distinct import make_distinct
from urecjpq_plugin.hosts.mmrec import hook


def user_codes_from_items(interactions: sp.spmatrix, item_codes: torch.Tensor, ksub: int, seed: int) -> torch.Tensor:
    """Per split, k-means of each user's normalised histogram over its training items' sub-ids."""
    X = sp.csr_matrix(interactions, dtype=np.float32)
    degree = np.asarray(X.sum(axis=1)).ravel()
    X = sp.diags((1 / np.maximum(degree, 1)).astype(np.float32)) @ X
    codes = item_codes.long().numpy()
    n_items, M = codes.shape
    out = np.zeros((X.shape[0], M), dtype=np.uint8 if ksub <= 256 else np.uint16)
    for k in range(M):
        onehot = sp.csr_matrix((np.ones(n_items, np.float32), (np.arange(n_items), codes[:, k])), shape=(n_items, ksub))
        histograms = torch.from_numpy(np.asarray((X @ onehot).todense(), dtype=np.float32))
        out[:, k] = kmeans_codes(histograms, 1, ksub, seed + k)[0][:, 0].numpy()
    make_distinct(out, ksub, seed)
    return torch.from_numpy(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--mmrec-src", required=True)
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--seed", type=int, required=True, help="the training seed (the bench's --seeds)")
    parser.add_argument("--out", required=True, help="folder for the compressed run's checkpoint")
    args = parser.parse_args()
    computed = hook.compute_codes

    def item_histogram_codes(jcfg, dataloader, model, config, interactions=None):
        codes = computed(jcfg, dataloader, model, config, interactions)
        matrix = interactions() if interactions is not None else dataloader.inter_matrix(form="csr")
        codes["user"] = user_codes_from_items(matrix, codes["item"], jcfg.ksub, jcfg.seed)
        return codes

    hook.compute_codes = item_histogram_codes
    torch.set_num_threads(1)
    overrides = {"data_path": os.path.abspath(args.data_path), "jpq": True, "jpq_M": "auto", "jpq_ksub": 256,
                 "jpq_code_assign": "svd_pq_cos", "jpq_targets": ["user", "item"], "seed": args.seed}
    record = hook.run_one(args.model, args.dataset, overrides, args.out, os.path.abspath(args.mmrec_src))
    print(json.dumps({"codes": {"user": "k-means of item sub-id histograms", "item": "svd_pq_cos"},
                      "seed": args.seed, **record}, default=str))


if __name__ == "__main__":
    main()

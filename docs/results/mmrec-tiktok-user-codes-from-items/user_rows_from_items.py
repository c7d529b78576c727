"""Train an MMRec model compressed whose user rows are ``(mean of the user's training items' rows) @ W`` plus the
user's default compressed row (``svd_pq_cos`` codes, degree scale), ``W`` a learned d x d matrix started at
``--mix-init`` times the identity (a diagnosis, sixteenth round; see README.md). For models that read the user
table's ``.weight`` (MGCN, FREEDOM, BM3). ``--detach``: no gradient from the users' rows into the item table.

    OMP_NUM_THREADS=1 <MMRec venv python> user_rows_from_items.py --model MGCN --mmrec-src <MMRec>/src \
        --data-path ../shared/datasets --seed 999 --detach --out <scratch>

Prints one JSON line (the bench's record; ``error`` if the record could not count this table).
"""
import argparse, json
import numpy as np, scipy.sparse as sp, torch
from torch import nn
from urecjpq_plugin.hosts.mmrec import hook
from run_args import add_run_arguments, run


class UsersFromItems(nn.Module):
    def __init__(self, residual, items, X, mix_init, residual_weight, detach=False):
        super().__init__()
        self.residual = residual
        self._items = [items]
        X = X.tocoo()
        self._X = torch.sparse_coo_tensor(np.vstack([X.row, X.col]), X.data, X.shape, dtype=torch.float32).coalesce()
        d = residual.embedding_dim
        self.mix = nn.Parameter(torch.eye(d) * mix_init)
        self.num_embeddings, self.embedding_dim = residual.num_embeddings, d
        self.rw = residual_weight
        self.detach = detach

    @property
    def weight(self):
        items = self._items[0].weight
        items = items.detach() if self.detach else items
        return torch.sparse.mm(self._X, items) @ self.mix + self.rw * self.residual.weight

    def forward(self, ids):
        return self.weight[ids]


def main():
    p = argparse.ArgumentParser()
    add_run_arguments(p)
    p.add_argument("--mix-init", type=float, default=1.0)
    p.add_argument("--residual-weight", type=float, default=1.0)
    p.add_argument("--detach", action="store_true")
    a = p.parse_args()
    original = hook.compress_model

    def compress_model(model, config, dataloader):
        summary = original(model, config, dataloader)
        X = dataloader.inter_matrix(form="csr").astype(np.float32)
        Xn = sp.diags(1 / np.maximum(np.asarray(X.sum(1)).ravel(), 1)) @ X
        model.user_embedding = UsersFromItems(model.user_embedding, model.item_id_embedding, Xn, a.mix_init,
                                              a.residual_weight, a.detach)
        return summary

    hook.compress_model = compress_model
    torch.set_num_threads(1)
    try:
        record = run(a)
    except Exception as e:  # the record's table counting may not know this module
        record = {"error": repr(e)}
    print(json.dumps({"users_from_items": True, "mix_init": a.mix_init, "rw": a.residual_weight, "detach": a.detach, "seed": a.seed,
                      "set": a.set, **record}, default=str))


if __name__ == "__main__":
    main()

"""Codes from a short LightGCN fit of the training pairs (``jpq_code_assign: lightgcn_fit``).

On sparse data the codes that train best are those of a *trained* model's rows (``jpq_codes_from``). This fits a
cheap model here, before the host trains, from the training matrix alone (no validation data, a fixed number of
epochs), and product-quantises its rows as ``jpq_codes_from`` does. Measured on TikTok (docs/benchmarks.md,
"Seventeenth round"): BM3, whose backbone is a LightGCN, gains (5 seeds, recall@20 vs uncompressed -6.3 % -> -1.0 %);
FREEDOM loses (-7.7 % -> -10.1 %). The fit holds four float32 rows per ID (rows, gradient, Adam's two moments; ``svd_pq``'s SVD
holds about two), and only while the codes are made: all is dropped before the host's training starts.

The fit is MMRec's LightGCN at its first grid point: one propagation layer over ``D^-1/2 A D^-1/2``, BPR loss on
the propagated rows with one uniform negative per pair, ``reg`` times the batch's ego rows' norms, Adam at 1e-3,
batches of 2048 pairs, Xavier-initialised rows.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp
import torch

from urecjpq_plugin.codes import kmeans_codes

logger = logging.getLogger("urecjpq_plugin")

# Epochs of the fit: MMRec's LightGCN on TikTok (seed 999, one layer, reg 1e-2) reached its best validation recall@20
# after ~32 epochs; the fit has no validation data to stop on, so it takes a fixed count near that.
FIT_EPOCHS = 30
# Each batch propagates over the whole graph (as MMRec's LightGCN does), so an epoch costs ~pairs^2 / batch size:
# TikTok's 59,541 training pairs take ~1 CPU s an epoch, so 250,000 would take about 20 s (10 min for the fit;
# extrapolated, not measured). Above this, auto
# keeps the SVD codes; an explicit lightgcn_fit still fits, with a warning of the cost.
FIT_MAX_PAIRS = 250_000


def normalised_adjacency(interactions: sp.spmatrix) -> sp.csr_matrix:
    """``D^-1/2 A D^-1/2`` of the bipartite graph ``A = [[0, X], [X^T, 0]]`` (users first), as CSR."""
    X = sp.csr_matrix(interactions, dtype=np.float32)
    X.data[:] = 1.0
    A = sp.bmat([[None, X], [X.T, None]], format="csr")
    inv_sqrt = 1.0 / np.sqrt(np.maximum(np.diff(A.indptr), 1)).astype(np.float32)
    return (sp.diags(inv_sqrt) @ A @ sp.diags(inv_sqrt)).tocsr().astype(np.float32)


def _sparse(matrix: sp.spmatrix) -> torch.Tensor:
    m = matrix.tocoo()
    return torch.sparse_coo_tensor(np.vstack([m.row, m.col]), m.data.astype(np.float32), m.shape,
                                   check_invariants=True).coalesce()


def lightgcn_fit_rows(
    interactions: sp.spmatrix, dim: int, seed: int, epochs: int = FIT_EPOCHS, batch_size: int = 2048,
    lr: float = 1e-3, reg: float = 1e-2, item_graph: sp.spmatrix | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trained ego rows ``(users [n_users, dim], items [n_items, dim])`` of a one-layer LightGCN fit by BPR.

    ``item_graph`` ``[n_items, n_items]``: its product with the item rows is added to the items' outputs (FREEDOM's
    item side; for the seventeenth round's diagnosis, not used by ``lightgcn_fit``)."""
    X = sp.csr_matrix(interactions)
    n_users, n_items = X.shape
    if X.nnz > FIT_MAX_PAIRS:
        logger.warning(f"urecjpq: lightgcn_fit on {X.nnz:,} training pairs (more than {FIT_MAX_PAIRS:,}): each of its "
                       f"{epochs} epochs costs about pairs^2 / {batch_size}; svd_pq_cos is the fast alternative")
    coo = X.tocoo()
    users = torch.from_numpy(coo.row.astype(np.int64))
    items = torch.from_numpy(coo.col.astype(np.int64)) + n_users
    adjacency = _sparse(normalised_adjacency(X))
    graph = _sparse(item_graph) if item_graph is not None else None
    generator = torch.Generator().manual_seed(seed)
    rows = torch.nn.Parameter(torch.empty(n_users + n_items, dim))
    bound = float(np.sqrt(6.0 / (n_users + n_items + dim)))  # xavier_uniform_ of the two tables stacked
    with torch.no_grad():
        rows.uniform_(-bound, bound, generator=generator)
    optimizer = torch.optim.Adam([rows], lr=lr)
    start = time.process_time()
    for _ in range(epochs):
        order = torch.randperm(len(users), generator=generator)
        for first in range(0, len(order), batch_size):
            batch = order[first:first + batch_size]
            negatives = torch.randint(n_users, n_users + n_items, (len(batch),), generator=generator)
            ids = torch.cat([users[batch], items[batch], negatives])
            # One layer over the whole graph, as MMRec's LightGCN does per batch: (row + its propagation) / 2.
            out = (rows + torch.sparse.mm(adjacency, rows)) / 2
            if graph is not None:
                out = torch.cat([out[:n_users], out[n_users:] + torch.sparse.mm(graph, rows[n_users:])])
            out = out[ids]
            u, i, j = out.split(len(batch))
            loss = -torch.nn.functional.logsigmoid((u * i).sum(1) - (u * j).sum(1)).mean()
            loss = loss + reg * sum(rows[part].norm() for part in ids.split(len(batch))) / len(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    logger.info(f"urecjpq: LightGCN fit of the training pairs for its codes: {epochs} epochs, "
                f"{time.process_time() - start:.1f} CPU s")
    fitted = rows.detach()
    return fitted[:n_users].clone(), fitted[n_users:].clone()


def lightgcn_fit_codes(
    interactions: sp.spmatrix, M: int, ksub: int, seed: int, dim: int, epochs: int = FIT_EPOCHS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """User and item codes: per-split k-means (``M`` x ``ksub``) of a LightGCN fit's rows (width ``dim``).

    As with ``jpq_codes_from``, IDs whose fitted rows agree everywhere keep one code (not made distinct: on TikTok
    90.6 % of the users and 99.2 % of the items have a code of their own; that is what was measured)."""
    users, items = lightgcn_fit_rows(interactions, dim, seed, epochs)
    return kmeans_codes(users, M, ksub, seed)[0], kmeans_codes(items, M, ksub, seed + 1)[0]

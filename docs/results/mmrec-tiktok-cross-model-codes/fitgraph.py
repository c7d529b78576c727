"""FREEDOM's frozen item-item feature graph, and a LightGCN fit whose item outputs add it (seventeenth round)."""
import numpy as np
import scipy.sparse as sp
import torch

from urecjpq_plugin.fit_codes import normalised_adjacency


def knn_graph(features: np.ndarray, k: int = 10) -> sp.csr_matrix:
    """Each item's k most cosine-similar items (itself included), weight 1/k: MMRec's FREEDOM's normalised kNN
    adjacency (every row has k entries, so D^-1/2 A D^-1/2 is A / k)."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    nearest = np.argpartition(-(unit @ unit.T), k, axis=1)[:, :k]
    rows = np.repeat(np.arange(len(unit)), k)
    return sp.csr_matrix((np.full(rows.size, 1.0 / k, np.float32), (rows, nearest.ravel())), shape=(len(unit),) * 2)


def feature_graph(image: np.ndarray, text: np.ndarray, image_weight: float = 0.1) -> sp.csr_matrix:
    """FREEDOM's ``mm_adj`` (its ``mm_image_weight`` 0.1, ``knn_k`` 10)."""
    return (image_weight * knn_graph(image) + (1 - image_weight) * knn_graph(text)).tocsr()


def _torch(matrix: sp.spmatrix) -> torch.Tensor:
    m = matrix.tocoo()
    return torch.sparse_coo_tensor(np.vstack([m.row, m.col]), m.data.astype(np.float32), m.shape,
                                   check_invariants=True).coalesce()


def fit_rows(X: sp.spmatrix, S: sp.spmatrix, seed: int, dim: int = 64, epochs: int = 30, batch_size: int = 2048,
             lr: float = 1e-3, reg: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """``urecjpq_plugin.fit_codes.lightgcn_fit_rows`` with ``S @ item rows`` added to the items' outputs (FREEDOM's
    item side); returns the trained (users, items) ego rows."""
    X = sp.csr_matrix(X)
    n_users, n_items = X.shape
    coo = X.tocoo()
    users = torch.from_numpy(coo.row.astype(np.int64))
    items = torch.from_numpy(coo.col.astype(np.int64)) + n_users
    adjacency, graph = _torch(normalised_adjacency(X)), _torch(S)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.nn.Parameter(torch.empty(n_users + n_items, dim))
    bound = float(np.sqrt(6.0 / (n_users + n_items + dim)))
    with torch.no_grad():
        rows.uniform_(-bound, bound, generator=generator)
    optimizer = torch.optim.Adam([rows], lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(users), generator=generator)
        for first in range(0, len(order), batch_size):
            batch = order[first:first + batch_size]
            negatives = torch.randint(n_users, n_users + n_items, (len(batch),), generator=generator)
            ids = torch.cat([users[batch], items[batch], negatives])
            out = (rows + torch.sparse.mm(adjacency, rows)) / 2
            out = torch.cat([out[:n_users], out[n_users:] + torch.sparse.mm(graph, rows[n_users:])])[ids]
            u, i, j = out.split(len(batch))
            loss = -torch.nn.functional.logsigmoid((u * i).sum(1) - (u * j).sum(1)).mean()
            loss = loss + reg * sum(rows[part].norm() for part in ids.split(len(batch))) / len(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    fitted = rows.detach()
    return fitted[:n_users].clone(), fitted[n_users:].clone()

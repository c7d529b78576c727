"""FREEDOM's frozen item-item feature graph, and a LightGCN fit whose item outputs add it (seventeenth round)."""
import numpy as np
import scipy.sparse as sp
import torch

from urecjpq_plugin.fit_codes import lightgcn_fit_rows


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


def fit_rows(X: sp.spmatrix, S: sp.spmatrix, seed: int, dim: int = 64, epochs: int = 30, batch_size: int = 2048,
             lr: float = 1e-3, reg: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """The plugin's LightGCN fit (``lightgcn_fit_rows``) with ``S @ item rows`` added to the items' outputs (FREEDOM's
    item side); returns the trained (users, items) ego rows."""
    return lightgcn_fit_rows(X, dim, seed, epochs, batch_size, lr, reg, item_graph=S)

"""Multimodal features meet JPQ, host-agnostic: compress feature tables, and derive ID codes from features.

- :func:`pq_feature_table` turns a pretrained feature table (``image_embedding``/``text_embedding``
  built with ``nn.Embedding.from_pretrained``) into a :class:`JPQEmbedding` whose codes come from
  per-split k-means of the features and whose sub-embeddings start at the centroids, so training
  starts from (close to) the real features. Trainable exactly when the original table was.
- :func:`feature_id_codes` gives user/item ID codes from item features (``features``), optionally
  mixed with the interaction SVD (``features_svd``): items from their own features, users from the
  mean features of the items they interacted with in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from urecjpq_plugin.codes import code_dtype, feature_codes, kmeans_codes, make_distinct, svd_codes
from urecjpq_plugin.pq import relative_error
from urecjpq_plugin.config import JPQConfigError
from urecjpq_plugin.jpq import JPQEmbedding


@dataclass(frozen=True)
class FeatureSwap:
    """What :func:`pq_feature_table` did to one table (for logs and reports)."""

    name: str
    rows: int
    dim: int
    trainable: bool
    params_before: int  # trainable parameters of the table before (0 when frozen)
    params_after: int
    bytes_before: int
    bytes_after: int
    relative_error: float  # ||X - X_hat||_F / ||X||_F at start (pq.relative_error)

    def describe(self) -> str:
        state = "trainable" if self.trainable else "frozen"
        return (
            f"{self.name}[{self.rows}x{self.dim}] ({state}): PQ reconstruction error at start "
            f"{self.relative_error:.4f} (||X - X_hat|| / ||X||), bytes {self.bytes_before:,} -> {self.bytes_after:,}"
        )


def check_feature_dim(dim: int, M: int, name: str) -> None:
    if dim % M:
        raise JPQConfigError(
            f"feature table {name} has width {dim}, not a multiple of jpq_M={M}; "
            f"choose jpq_M among {[m for m in range(1, min(dim, 64) + 1) if dim % m == 0]} or drop it from jpq_targets"
        )


def pq_feature_table(
    weight: torch.Tensor, M: int, ksub: int, seed: int, name: str = "features", placeholder: bool = False
) -> tuple[JPQEmbedding, FeatureSwap]:
    """Product-quantise a feature table ``weight [N, d]``; returns the module and a :class:`FeatureSwap`.

    ``ksub`` is capped at ``N`` (k-means cannot place more distinct centroids than points).
    ``placeholder=True`` skips k-means and returns a module of the right shapes (zeros), for
    loading a checkpoint that holds the trained codes and sub-embeddings.
    """
    rows, dim = weight.shape
    check_feature_dim(dim, M, name)
    ksub = max(2, min(ksub, rows))
    if placeholder:
        codes = torch.zeros(rows, M, dtype=code_dtype(ksub))
        centroids = torch.zeros(M, ksub, dim // M)
    else:
        codes, centroids = kmeans_codes(weight.detach(), M, ksub, seed)
    module = JPQEmbedding.from_centroids(codes, centroids).to(device=weight.device, dtype=weight.dtype)
    module.sub_embeddings.requires_grad_(weight.requires_grad)
    error = float("nan") if placeholder else relative_error(weight, module.weight)
    swap = FeatureSwap(
        name,
        rows,
        dim,
        weight.requires_grad,
        weight.numel() if weight.requires_grad else 0,
        module.sub_embeddings.numel() if weight.requires_grad else 0,
        weight.numel() * weight.element_size(),
        module.compact_bytes(),
        error,
    )
    return module, swap


def normalised_concat(features: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
    """L2-normalise each modality's rows, then concatenate (so no modality dominates by scale)."""
    parts = []
    for f in features:
        x = np.asarray(f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else f, dtype=np.float32)
        parts.append(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))
    if not parts:
        raise JPQConfigError("jpq_code_assign=features needs item features (image or text); the dataset has none")
    return np.concatenate(parts, axis=1)


def user_mean_features(interactions: sp.spmatrix, item_features: np.ndarray) -> np.ndarray:
    """Row ``u``: the mean feature vector of the items user ``u`` interacted with (zeros if none)."""
    R = sp.csr_matrix(interactions, dtype=np.float32)
    R.data[:] = 1.0
    counts = np.asarray(R.sum(axis=1)).ravel()
    scale = sp.diags(1.0 / np.maximum(counts, 1.0))
    return np.asarray(scale @ R @ item_features, dtype=np.float32)


def feature_id_codes(
    item_features: np.ndarray, interactions: sp.spmatrix, M: int, ksub: int, seed: int, mode: str = "features"
) -> tuple[torch.Tensor, torch.Tensor]:
    """User and item codes from features (``mode='features'``) or half features, half SVD (``'features_svd'``).

    ``item_features [n_items, f]`` (e.g. :func:`normalised_concat`), ``interactions`` the user x item
    *training* matrix. ``features_svd``: the first ``ceil(M/2)`` splits from features, the rest
    from :func:`codes.svd_codes`. Either way no two IDs of a table share their whole code while
    ``ksub**M`` allows (:func:`codes.distinct_codes`, applied to the joined codes).
    """
    if mode not in ("features", "features_svd"):
        raise JPQConfigError(f"mode={mode!r} is not a feature code assignment; valid: features, features_svd")
    n_users, n_items = interactions.shape
    if item_features.shape[0] != n_items:
        raise JPQConfigError(f"item features have {item_features.shape[0]} rows; the interaction matrix has {n_items} items")
    m_feat = M if mode == "features" else (M + 1) // 2
    users = user_mean_features(interactions, item_features)
    mixed = m_feat < M
    item_codes = feature_codes(item_features, m_feat, ksub, seed + 1, distinct=not mixed)
    user_codes = feature_codes(users, m_feat, ksub, seed, distinct=not mixed)
    if mixed:
        u_svd, i_svd = svd_codes(interactions, M - m_feat, ksub, seed, distinct=False)
        user_codes = torch.cat([user_codes, u_svd], dim=1)
        item_codes = torch.cat([item_codes, i_svd], dim=1)
        make_distinct(user_codes.numpy(), ksub, seed)  # in place: the tensors share the memory
        make_distinct(item_codes.numpy(), ksub, seed + 1)
    return user_codes, item_codes

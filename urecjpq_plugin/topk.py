"""PQ scoring and top-k straight from codes (PQTopK), without a decoded ``[N, d]`` table."""

from __future__ import annotations

import torch


def pq_scores(
    queries: torch.Tensor, sub_embeddings: torch.Tensor, codes: torch.Tensor, padding_idx: int | None = None
) -> torch.Tensor:
    """``queries [B, d]`` -> scores ``[B, N]`` with ``score(i) = sum_k S[k, g(i, k)]``.

    ``S [B, M, ksub] = q_k . C[k, j]`` costs ``B*M*ksub*dsub``; then ``M`` gathers per item.
    """
    M, ksub, dsub = sub_embeddings.shape
    q = queries.reshape(queries.shape[0], M, dsub)
    S = torch.einsum("bmd,mkd->bmk", q, sub_embeddings)  # [B, M, ksub]
    scores = S[:, 0, :].index_select(1, codes[:, 0].long())
    for k in range(1, M):
        scores = scores + S[:, k, :].index_select(1, codes[:, k].long())
    if padding_idx is not None:
        scores[:, padding_idx] = 0.0
    return scores

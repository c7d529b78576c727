"""PQ scoring and top-k straight from codes (PQTopK), without a decoded ``[N, d]`` table.

For queries ``q`` split into ``M`` parts, the lookup table ``S[k, b, j] = q_bk . C[k, j]`` costs
``B*M*ksub*dsub`` multiply-adds; item ``i`` then scores ``sum_k S[k, b, g(i, k)]``: ``M`` gathers per
item and query instead of ``d`` multiply-adds on a decoded row.

Items are processed in chunks: the uint8 codes of a chunk are widened to int64 there (a few hundred KiB,
cache-resident), so no int64 copy of the codes is ever cached (it would be 640 MB at 10^7 x 8), and
:func:`topk_from_codes` keeps only a running ``[B, k]`` top-k, never a ``[B, N]`` matrix.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import URecJPQError

# Items per chunk when the caller gives none: keeps a chunk's [B, chunk] scores near 4 MiB (and the
# widened codes of a chunk in cache) while amortising per-chunk overhead; measured on 2 CPU cores.
_CHUNK_FLOATS = 1 << 20
_MIN_CHUNK, _MAX_CHUNK = 1024, 65536
# From this many queries on, embedding_bag beats per-split gathers (B=1: 8x slower; B=4: 2x faster).
_BAG_MIN_BATCH = 4


class TopKError(URecJPQError):
    """Bad arguments to PQ scoring / top-k (shapes, ``k``, exclusions)."""


def default_chunk_size(batch: int) -> int:
    return int(min(_MAX_CHUNK, max(_MIN_CHUNK, _CHUNK_FLOATS // max(batch, 1))))


def _check(queries: torch.Tensor, sub_embeddings: torch.Tensor, codes: torch.Tensor) -> None:
    if sub_embeddings.ndim != 3:
        raise TopKError(f"sub_embeddings must be [M, ksub, dsub]; got shape {tuple(sub_embeddings.shape)}")
    M, _, dsub = sub_embeddings.shape
    if queries.ndim != 2 or queries.shape[1] != M * dsub:
        raise TopKError(f"queries must be [B, {M * dsub}] (M*dsub); got shape {tuple(queries.shape)}")
    if codes.ndim != 2 or codes.shape[1] != M:
        raise TopKError(f"codes must be [N, {M}] (one sub-id per split); got shape {tuple(codes.shape)}")


def lookup_tables(queries: torch.Tensor, sub_embeddings: torch.Tensor) -> torch.Tensor:
    """``S [M, B, ksub]``: each query part against every sub-embedding of its split (contiguous per split)."""
    M, _, dsub = sub_embeddings.shape
    q = queries.to(sub_embeddings.dtype).reshape(queries.shape[0], M, dsub)
    return torch.einsum("bmd,mkd->mbk", q, sub_embeddings).contiguous()


def item_major_scores(S: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Scores ``[n, B]`` (items x queries, possibly a transposed view) of the items whose codes ``[n, M]``
    are given, from lookup tables ``S [M, B, ksub]``.

    Two kernels, picked by batch size (measured on CPU, see benchmarks/bench_topk.py):
    few queries: per split, gather ``n`` scalars from its ``ksub`` table and add (``M`` index_selects);
    more: ``embedding_bag`` over the flattened ``[M * ksub, B]`` table, which sums ``M`` contiguous
    ``B``-rows per item in one fused pass (2-3x faster than per-split gathers at B >= 4, 8x slower at B = 1).
    """
    M, batch, ksub = S.shape
    if batch < _BAG_MIN_BATCH:
        sub_ids = codes.t().long()  # [M, n]; widened per chunk, the stored codes stay uint8
        out = S[0].index_select(1, sub_ids[0])
        for k in range(1, M):
            out += S[k].index_select(1, sub_ids[k])
        return out.t()
    index_dtype = torch.int32 if M * ksub < 2**31 else torch.int64
    flat_ids = codes.to(index_dtype) + torch.arange(0, M * ksub, ksub, dtype=index_dtype, device=codes.device)
    table = S.transpose(1, 2).reshape(M * ksub, batch)  # row k*ksub + j holds S[k, :, j]
    return F.embedding_bag(flat_ids, table, mode="sum")


def chunk_scores(S: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Scores ``[B, n]`` (contiguous) of the items whose codes ``[n, M]`` are given."""
    return item_major_scores(S, codes).t().contiguous()


def pq_scores(
    queries: torch.Tensor,
    sub_embeddings: torch.Tensor,
    codes: torch.Tensor,
    padding_idx: int | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``queries [B, d]`` -> scores ``[B, N]`` equal to ``queries @ decode(codes).T`` (float tolerance).

    ``padding_idx``'s column is 0, as its decoded row is zero in :class:`~urecjpq_plugin.jpq.JPQEmbedding`.
    """
    _check(queries, sub_embeddings, codes)
    S = lookup_tables(queries, sub_embeddings)
    n = codes.shape[0]
    chunk = chunk_size or default_chunk_size(queries.shape[0])
    if n <= chunk:
        scores = chunk_scores(S, codes)
    else:
        scores = torch.cat([chunk_scores(S, codes[s : s + chunk]) for s in range(0, n, chunk)], dim=1)
    if padding_idx is not None:
        scores[:, padding_idx] = 0.0
    return scores


# -- exclusions -------------------------------------------------------------------------------
def _exclusion_pairs(exclude: Any, batch: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(rows, cols)`` of excluded (query, item) pairs, sorted by item so each chunk takes a slice.

    ``exclude``: None; a scipy sparse ``[B, N]`` matrix (stored entries are excluded); a ``[B, N]`` bool
    tensor; or a sequence of ``B`` index collections (tensor, array or list per query).
    """
    if exclude is None:
        return None
    if hasattr(exclude, "tocoo"):  # scipy sparse
        if tuple(exclude.shape) != (batch, n_items):
            raise TopKError(f"exclude has shape {tuple(exclude.shape)}; expected [B, N] = [{batch}, {n_items}]")
        coo = exclude.tocoo()
        rows, cols = np.asarray(coo.row, dtype=np.int64), np.asarray(coo.col, dtype=np.int64)
    elif isinstance(exclude, torch.Tensor) and exclude.dtype == torch.bool:
        if tuple(exclude.shape) != (batch, n_items):
            raise TopKError(f"exclude has shape {tuple(exclude.shape)}; expected [B, N] = [{batch}, {n_items}]")
        rows_t, cols_t = exclude.nonzero(as_tuple=True)
        rows, cols = rows_t.cpu().numpy(), cols_t.cpu().numpy()
    elif isinstance(exclude, Sequence) or isinstance(exclude, torch.Tensor):
        if len(exclude) != batch:
            raise TopKError(f"exclude has {len(exclude)} index lists; expected one per query ({batch})")
        per_row = [torch.as_tensor(ids, dtype=torch.long).reshape(-1).cpu().numpy() for ids in exclude]
        rows = np.repeat(np.arange(batch, dtype=np.int64), [len(ids) for ids in per_row])
        cols = np.concatenate(per_row) if per_row else np.empty(0, dtype=np.int64)
    else:
        raise TopKError(
            f"exclude of type {type(exclude).__name__} is not supported; give a scipy sparse [B, N] matrix, "
            "a [B, N] bool tensor or a list of B index tensors"
        )
    if cols.size and (cols.min() < 0 or cols.max() >= n_items):
        bad = int(cols.min() if cols.min() < 0 else cols.max())
        raise TopKError(f"exclude holds item {bad}; valid items are [0, {n_items})")
    order = np.argsort(cols, kind="stable")
    return torch.from_numpy(rows[order].copy()), torch.from_numpy(cols[order].copy())


def topk_from_codes(
    queries: torch.Tensor,
    sub_embeddings: torch.Tensor,
    codes: torch.Tensor,
    k: int,
    exclude: Any = None,
    chunk_size: int | None = None,
    padding_idx: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items per query over the whole catalogue, in ``O(B * (k + chunk_size))`` memory.

    Same answer as ``torch.topk(pq_scores(...), k)`` (ties aside), with excluded (query, item) pairs
    scored ``-inf`` (see :func:`_exclusion_pairs` for the accepted forms). Returns ``(values, indices)``,
    each ``[B, k]``, best first. ``padding_idx`` scores 0 as in :func:`pq_scores`; exclude it to drop it.
    """
    _check(queries, sub_embeddings, codes)
    n_items = codes.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_items:
        raise TopKError(f"k={k!r} is invalid; it must be an integer in [1, {n_items}] (the number of items)")
    batch = queries.shape[0]
    chunk = chunk_size or default_chunk_size(batch)
    if chunk < 1:
        raise TopKError(f"chunk_size={chunk_size!r} is invalid; it must be a positive integer")
    pairs = _exclusion_pairs(exclude, batch, n_items)
    device = sub_embeddings.device
    if pairs is not None:
        pairs = (pairs[0].to(device), pairs[1].to(device))
    S = lookup_tables(queries, sub_embeddings)
    best_values = best_indices = None
    for start in range(0, n_items, chunk):
        stop = min(start + chunk, n_items)
        scores = item_major_scores(S, codes[start:stop])  # [n, B]
        if padding_idx is not None and start <= padding_idx < stop:
            scores[padding_idx - start] = 0.0
        if pairs is not None:
            lo, hi = torch.searchsorted(pairs[1], torch.tensor([start, stop], device=device)).tolist()
            if hi > lo:
                scores[pairs[1][lo:hi] - start, pairs[0][lo:hi]] = float("-inf")
        if best_values is None or best_values.shape[1] < k:
            candidates = torch.arange(start, stop, device=device)
            values = scores.t()
        else:
            # Only items that beat some query's current k-th best can enter; a cheap comparison
            # pass leaves topk a few columns instead of the whole chunk.
            beats = (scores > best_values[:, -1]).any(dim=1).nonzero().squeeze(1)
            if beats.numel() == 0:
                continue
            candidates = beats + start
            values = scores.index_select(0, beats).t()
        values, pick = values.topk(min(k, values.shape[1]), dim=1)
        indices = candidates[pick]
        if best_values is not None:
            values = torch.cat([best_values, values], dim=1)
            indices = torch.cat([best_indices, indices], dim=1)
            values, pick = values.topk(min(k, values.shape[1]), dim=1)
            indices = indices.gather(1, pick)
        best_values, best_indices = values, indices
    return best_values, best_indices

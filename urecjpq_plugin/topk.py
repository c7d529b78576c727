"""Top-k and full scores over a PQ/JPQ table straight from its codes, dispatched by measured cost.

Codes ``g [N, M]`` (uint8 for ``ksub <= 256``) and sub-embeddings ``C [M, ksub, dsub]`` give item ``i`` the
row ``C[0, g(i, 0)] || ... || C[M-1, g(i, M-1)]``. Two ways to score queries ``q [B, d]`` against it:

- **lookup-table scan**: ``S[k, b, j] = q_bk . C[k, j]`` (``B*M*ksub*dsub`` multiply-adds), then ``M``
  table entries added per item and query. Cost ~ ``B * N * M``, independent of ``d``. faiss's
  ``ProductQuantizer`` scan when faiss is importable, else a torch pair-table scan
  (:mod:`urecjpq_plugin.topk_kernels`).
- **chunked decode + matmul**: decode a chunk of rows, BLAS ``q @ rows.T``. Cost ~ ``N * d`` to decode
  plus ``B * N * d`` multiply-adds at BLAS speed: wins for big batches at small ``d / M``.

:func:`choose_method` compares the two with per-item costs measured on the development machine (see
``_NS``); both keep memory bounded: a running ``[B, k]`` top-k, never a ``[B, N]`` matrix or a decoded
``[N, d]`` table (chunks of at most a few MiB). :func:`pq_scores` stays the differentiable PQ scorer.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from urecjpq_plugin import topk_kernels as kernels
from urecjpq_plugin.pq import decode_rows
from urecjpq_plugin.config import URecJPQError
from urecjpq_plugin.decode_cache import DecodeCache

# Items per chunk when the caller gives none: keeps a chunk's [B, chunk] scores near 4 MiB (and the
# widened codes of a chunk in cache) while amortising per-chunk overhead; measured on 2 CPU cores.
_CHUNK_FLOATS = 1 << 20
_MIN_CHUNK, _MAX_CHUNK = 1024, 65536
# From this many queries on, embedding_bag beats per-split gathers (B=1: 8x slower; B=4: 2x faster).
_BAG_MIN_BATCH = 4
# Off the CPU (GPU) a chunk's [B, n] scores and [n, d] decoded rows may reach this many floats (256 MiB):
# few chunks, so kernel launches and the merge of running top-k stay negligible beside the matmul; a
# rule, not a measurement (no GPU was at hand; benchmarks/gpu_check.sh measures it where one is).
_DEVICE_CHUNK_FLOATS = 1 << 26
# Over-fetching for exclusions beyond this many candidates per query stops paying in faiss's heap.
_FAISS_MAX_FETCH = 4096

# Cost model, nanoseconds per item (per query where it says so), 1 thread, 2-core AMD EPYC VM shared
# with other jobs (load 4-5), torch 2.13 CPU, faiss 1.15, 10^6 items: from
# `python benchmarks/bench_topk.py --calibrate` and forced-method runs at d=64, B=16/64/256 (faiss
# 183/1072/4043 ms, matmul 427/1446/3850 ms). Only the scan/matmul cut-over rests on them; it comes
# out at ~120 queries for d=64, M=8 with faiss (~12 without), and the scan always wins at d=512, M=8.
_NS = {
    "faiss_per_split": 1.9,  # faiss PQ scan incl. its heap, per query and split
    "pair_per_lookup": 8.5,  # torch pair-table scan, per query and pair of splits
    "split_per_lookup": 8.0,  # torch per-split gathers (odd M / wide codes), per query and split
    "pair_tables": 200_000.0,  # building a query's M/2 x 65536 pair tables (per query, not per item)
    "decode_per_float": 5.0,  # decoding one float of a row (chunk decode: int32 index + index_select)
    "mm_per_fma": 0.12,  # BLAS q @ rows.T, per query and multiply-add
    "running_topk": 4.8,  # filtering a score against the running k-th best, per query
}


class TopKError(URecJPQError):
    """Bad arguments to PQ scoring / top-k (shapes, ``k``, exclusions, method)."""


METHODS = ("auto", "faiss", "lut", "matmul")


def _on_cpu(device: Any) -> bool:
    return torch.device(device).type == "cpu"


def default_chunk_size(batch: int, device: Any = "cpu") -> int:
    if not _on_cpu(device):
        return int(max(_MAX_CHUNK, _DEVICE_CHUNK_FLOATS // max(batch, 1)))
    return int(min(_MAX_CHUNK, max(_MIN_CHUNK, _CHUNK_FLOATS // max(batch, 1))))


def _matmul_chunk(batch: int, d: int, device: Any = "cpu") -> int:
    if not _on_cpu(device):
        return int(max(_MAX_CHUNK, _DEVICE_CHUNK_FLOATS // max(batch, d)))
    # [B, n] scores and [n, d] decoded rows both near 2 MiB: measured best at B=256 (2048-8192 rows).
    return int(min(_MAX_CHUNK, max(_MIN_CHUNK, (1 << 19) // max(batch, d))))


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
    are given, from lookup tables ``S [M, B, ksub]``; differentiable in ``S``.

    Few queries: per split, gather ``n`` scalars from its ``ksub`` table and add (``M`` index_selects);
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


def pq_scores(
    queries: torch.Tensor,
    sub_embeddings: torch.Tensor,
    codes: torch.Tensor,
    padding_idx: int | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``queries [B, d]`` -> scores ``[B, N]`` equal to ``queries @ decode(codes).T``, differentiable.

    ``padding_idx``'s column is 0, as its decoded row is zero in :class:`~urecjpq_plugin.jpq.JPQEmbedding`.
    For evaluation (no gradient) :func:`scores_from_codes` is faster.
    """
    _check(queries, sub_embeddings, codes)
    S = lookup_tables(queries, sub_embeddings)
    n = codes.shape[0]
    chunk = chunk_size or default_chunk_size(queries.shape[0], codes.device)
    parts = [item_major_scores(S, codes[s : s + chunk]).t() for s in range(0, n, chunk)]
    scores = parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, dim=1)
    if padding_idx is not None:
        scores[:, padding_idx] = 0.0
    return scores


# -- dispatch -----------------------------------------------------------------------------------
def _scan_ns(batch: int, M: int, codes: torch.Tensor, use_faiss: bool, full: bool) -> float:
    """Per-item cost of a lookup-table scan of ``batch`` queries (ns), amortised fixed costs included."""
    n = max(codes.shape[0], 1)
    if use_faiss and not full:
        return batch * M * _NS["faiss_per_split"]
    topk = 0.0 if full else _NS["running_topk"]
    if kernels.pair_scan_applies(codes):
        return batch * (M / 2 * _NS["pair_per_lookup"] + topk + _NS["pair_tables"] / n)
    return batch * (M * _NS["split_per_lookup"] + topk)


def _matmul_ns(batch: int, d: int, full: bool) -> float:
    topk = 0.0 if full else _NS["running_topk"]
    return d * _NS["decode_per_float"] + batch * (d * _NS["mm_per_fma"] + topk)


def choose_method(
    queries: torch.Tensor, sub_embeddings: torch.Tensor, codes: torch.Tensor, full: bool = False, allow_faiss: bool = True
) -> str:
    """``"faiss"``, ``"lut"`` (torch scan) or ``"matmul"`` (chunked decode + BLAS): the cheapest here.

    ``full``: for full ``[B, N]`` scores (faiss only returns a top-k, so it is not a candidate then);
    ``allow_faiss=False``: the choice without faiss (as when it is not installed).
    Off the CPU (GPU) BLAS matmul always wins.
    """
    if codes.device.type != "cpu" or sub_embeddings.device.type != "cpu":
        return "matmul"
    batch, d = queries.shape
    M = codes.shape[1]
    use_faiss = allow_faiss and not full and kernels.faiss_nbits(sub_embeddings, codes) is not None
    scan = _scan_ns(batch, M, codes, use_faiss, full)
    if scan <= _matmul_ns(batch, d, full):
        return "faiss" if use_faiss else "lut"
    return "matmul"


# -- exclusions -------------------------------------------------------------------------------
def _exclusion_pairs(exclude: Any, batch: int, n_items: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(rows, cols)`` of excluded (query, item) pairs on ``device``, sorted by item so each chunk takes a
    slice; built on the device (one read of the item range back for the check, none per chunk).

    ``exclude``: None; a scipy sparse ``[B, N]`` matrix (stored entries are excluded); a ``[B, N]`` bool
    tensor; or a sequence of ``B`` index collections (tensor, array or list per query).
    """
    if exclude is None:
        return None
    if hasattr(exclude, "tocoo"):  # scipy sparse
        if tuple(exclude.shape) != (batch, n_items):
            raise TopKError(f"exclude has shape {tuple(exclude.shape)}; expected [B, N] = [{batch}, {n_items}]")
        coo = exclude.tocoo()
        rows = torch.from_numpy(np.asarray(coo.row, dtype=np.int64)).to(device)
        cols = torch.from_numpy(np.asarray(coo.col, dtype=np.int64)).to(device)
    elif isinstance(exclude, torch.Tensor) and exclude.dtype == torch.bool:
        if tuple(exclude.shape) != (batch, n_items):
            raise TopKError(f"exclude has shape {tuple(exclude.shape)}; expected [B, N] = [{batch}, {n_items}]")
        rows, cols = exclude.to(device).nonzero(as_tuple=True)
    elif isinstance(exclude, Sequence) or isinstance(exclude, torch.Tensor):
        if len(exclude) != batch:
            raise TopKError(f"exclude has {len(exclude)} index lists; expected one per query ({batch})")
        per_row = [torch.as_tensor(ids, dtype=torch.long).reshape(-1).to(device) for ids in exclude]
        lengths = torch.tensor([len(ids) for ids in per_row], dtype=torch.long, device=device)
        rows = torch.repeat_interleave(torch.arange(batch, device=device), lengths)
        cols = torch.cat(per_row) if per_row else torch.empty(0, dtype=torch.long, device=device)
    else:
        raise TopKError(
            f"exclude of type {type(exclude).__name__} is not supported; give a scipy sparse [B, N] matrix, "
            "a [B, N] bool tensor or a list of B index tensors"
        )
    if cols.numel():
        low, high = torch.stack(torch.aminmax(cols)).tolist()
        if low < 0 or high >= n_items:
            raise TopKError(f"exclude holds item {low if low < 0 else high}; valid items are [0, {n_items})")
    order = torch.sort(cols, stable=True).indices
    return rows[order], cols[order]


def _syncs_are_cheap(tensor: torch.Tensor) -> bool:
    """Whether reading a value of ``tensor`` back to the host is free (CPU) rather than a stream stall (GPU):
    chooses between the paths that branch on data (measured on CPU) and those that never read back."""
    return tensor.device.type == "cpu"


# -- running top-k over chunks --------------------------------------------------------------------
class _RunningTopK:
    """Best ``k`` per query over chunks of ``[B, n]`` scores, in ``O(B * k)`` memory.

    On the CPU, once ``k`` are held, a cheap comparison pass keeps only the items that beat some query's
    current k-th best, so later chunks mostly skip ``topk`` (ties with the k-th best are not taken). On a
    GPU that pass would read its result back to the host every chunk; there every chunk goes through
    ``topk`` and the merge, with no host round trip.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: torch.Tensor | None = None
        self.indices: torch.Tensor | None = None

    def add(self, scores: torch.Tensor, start: int) -> None:
        k, candidates = self.k, None
        if self.values is not None and self.values.shape[1] >= k and _syncs_are_cheap(scores):
            beats = (scores > self.values[:, -1:]).any(dim=0).nonzero().squeeze(1)
            if beats.numel() == 0:
                return
            if beats.numel() < scores.shape[1]:
                scores, candidates = scores.index_select(1, beats), beats
        values, pick = scores.topk(min(k, scores.shape[1]), dim=1)
        indices = (pick if candidates is None else candidates[pick]) + start
        if self.values is not None:
            values, indices = torch.cat([self.values, values], 1), torch.cat([self.indices, indices], 1)
            values, pick = values.topk(min(k, values.shape[1]), dim=1)
            indices = indices.gather(1, pick)
        self.values, self.indices = values, indices


def _mask(scores: torch.Tensor, start: int, padding_idx: int | None, pairs) -> None:
    """Excluded (query, item) pairs and the padding item of a ``[B, n]`` chunk -> ``-inf``, in place."""
    stop = start + scores.shape[1]
    if padding_idx is not None and start <= padding_idx < stop:
        scores[:, padding_idx - start] = float("-inf")
    if pairs is None or not len(pairs[1]):
        return
    rows, cols = pairs
    if _syncs_are_cheap(cols):  # the chunk's slice of the item-sorted pairs
        lo, hi = np.searchsorted(cols.numpy(), [start, stop])
        if hi > lo:
            scores[rows[lo:hi], cols[lo:hi] - start] = float("-inf")
        return
    # On a GPU, slicing would read the bounds back every chunk: add -inf at the pairs inside the chunk and
    # 0 elsewhere (accumulating, so pairs outside it, all sent to one slot, change nothing).
    local = cols - start
    inside = (local >= 0) & (local < scores.shape[1])
    flat = torch.where(inside, rows * scores.shape[1] + local, torch.zeros_like(local))
    add = torch.zeros(flat.shape, dtype=scores.dtype, device=scores.device).masked_fill_(inside, float("-inf"))
    scores.view(-1).index_put_((flat,), add, accumulate=True)


def _scaled(scores: torch.Tensor, start: int, row_scale: torch.Tensor | None) -> torch.Tensor:
    """``[B, n]`` chunk scores times the items' row scales (``[N]``), when the table has them."""
    return scores if row_scale is None else scores.mul_(row_scale[start : start + scores.shape[1]])


def _scan_topk(S, codes, k, chunk, padding_idx, pairs, row_scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch lookup-table scan, one query at a time (its pair tables are 1 MiB per query)."""
    M, batch, _ = S.shape
    n_items = codes.shape[0]
    use_pairs = kernels.pair_scan_applies(codes)
    chunk = max(chunk, _MAX_CHUNK)  # one query's [n] scores: large chunks amortise per-chunk overhead
    out = torch.empty(min(chunk, n_items), dtype=S.dtype, device=S.device)
    results = []
    for b in range(batch):
        mine = None
        if pairs is not None:
            if _syncs_are_cheap(S):
                keep = pairs[0] == b
                mine = (torch.zeros(int(keep.sum()), dtype=torch.long, device=S.device), pairs[1][keep])
            else:  # no size read back: the other queries' pairs point before every chunk
                mine = (torch.zeros_like(pairs[0]), torch.where(pairs[0] == b, pairs[1], -1))
        P = kernels.pair_tables(S[:, b]) if use_pairs else None
        best = _RunningTopK(k)
        for start in range(0, n_items, chunk):
            part = codes[start : start + chunk]
            if use_pairs:
                scores = kernels.pair_scores(P, part, out[: part.shape[0]])
            else:
                scores = item_major_scores(S[:, b : b + 1], part)[:, 0]
            scores = _scaled(scores.unsqueeze(0), start, row_scale)
            _mask(scores, start, padding_idx, mine)
            best.add(scores, start)
        results.append((best.values, best.indices))
    return torch.cat([v for v, _ in results]), torch.cat([i for _, i in results])


def _matmul_topk(queries, sub_embeddings, codes, k, chunk, padding_idx, pairs, row_scale=None):
    best = _RunningTopK(k)
    for start in range(0, codes.shape[0], chunk):
        scores = _scaled(queries @ decode_rows(sub_embeddings, codes[start : start + chunk]).T, start, row_scale)
        _mask(scores, start, padding_idx, pairs)
        best.add(scores, start)
    return best.values, best.indices


def _faiss_topk(queries, sub_embeddings, codes, k, padding_idx, pairs, nbits, cache):
    """faiss scan; exclusions and padding by over-fetching ``k + (most excluded in a row) + 1`` and
    dropping them, which is exact: at most that many of the fetched items can be dropped."""
    batch, n_items = queries.shape[0], codes.shape[0]
    most_excluded = int(torch.bincount(pairs[0], minlength=batch).max()) if pairs is not None and len(pairs[0]) else 0
    fetch = k + most_excluded + (padding_idx is not None)
    if fetch > min(n_items, _FAISS_MAX_FETCH):
        return None
    values, indices = kernels.faiss_topk(queries, sub_embeddings, codes, fetch, nbits, cache)
    if fetch == k:
        return values, indices
    drop = torch.zeros_like(values, dtype=torch.bool)
    if padding_idx is not None:
        drop |= indices == padding_idx
    if pairs is not None and len(pairs[0]):
        keys = pairs[0].cpu() * n_items + pairs[1].cpu()
        drop |= torch.isin(torch.arange(batch).unsqueeze(1) * n_items + indices, keys)
    values = values.masked_fill(drop, float("-inf"))
    values, pick = values.topk(k, dim=1)  # faiss's order is best first: topk keeps it
    return values, indices.gather(1, pick)


def topk_from_codes(
    queries: torch.Tensor,
    sub_embeddings: torch.Tensor,
    codes: torch.Tensor,
    k: int,
    exclude: Any = None,
    chunk_size: int | None = None,
    padding_idx: int | None = None,
    method: str = "auto",
    row_scale: torch.Tensor | None = None,
    cache: DecodeCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items per query by dot product with the decoded rows, best first: ``(values, indices)``,
    each ``[B, k]``; no ``[B, N]`` matrix and no decoded table (memory ``O(B * (k + chunk))``).

    Same answer as ``torch.topk(queries @ decoded.T, k)`` (ties aside), with excluded (query, item)
    pairs (see :func:`_exclusion_pairs`) and ``padding_idx`` never returned (a ``-inf`` value marks a
    filler slot when a query has fewer than ``k`` allowed items). ``method``: ``"auto"`` (cheapest by
    :func:`choose_method`), ``"faiss"``, ``"lut"`` (torch scan) or ``"matmul"``. No gradient.
    ``row_scale``: per-item multipliers ``[N]`` (or ``[N, 1]``) of a table with a row scale; faiss's
    scan has no place for them, so the torch scan or matmul runs instead. ``cache``: the owning module's
    :class:`~urecjpq_plugin.decode_cache.DecodeCache` (``JPQEmbedding.topk`` passes it), where faiss's
    quantizer and packed codes are kept between calls; without one they are rebuilt per call.
    """
    _check(queries, sub_embeddings, codes)
    n_items = codes.shape[0]
    if row_scale is not None:
        row_scale = row_scale.reshape(-1).to(device=codes.device, dtype=sub_embeddings.dtype)
        if row_scale.shape[0] != n_items:
            raise TopKError(f"row_scale has {row_scale.shape[0]} entries; the codes have {n_items} items")
        if method == "faiss":
            raise TopKError("method='faiss' cannot apply a row scale; use auto, lut or matmul")
    valid = n_items - (padding_idx is not None)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= valid:
        raise TopKError(f"k={k!r} is invalid; it must be an integer in [1, {valid}] (the number of non-padding items)")
    if method not in METHODS:
        raise TopKError(f"method={method!r} is invalid; choose one of {', '.join(METHODS)}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise TopKError(f"chunk_size={chunk_size!r} is invalid; it must be a positive integer")
    batch, d = queries.shape
    pairs = _exclusion_pairs(exclude, batch, n_items, codes.device)
    allow_faiss = row_scale is None
    chosen = choose_method(queries, sub_embeddings, codes, allow_faiss=allow_faiss) if method == "auto" else method
    with torch.no_grad():
        if chosen == "faiss":
            nbits = kernels.faiss_nbits(sub_embeddings, codes)
            if nbits is None:
                raise TopKError("method='faiss' needs faiss installed, CPU float32 sub_embeddings and ksub a power of 2")
            found = _faiss_topk(queries, sub_embeddings, codes, k, padding_idx, pairs, nbits, cache)
            if found is not None:
                return found
            chosen = choose_method(queries, sub_embeddings, codes, allow_faiss=False)
        queries = queries.to(sub_embeddings.dtype)
        if chosen == "lut":
            chunk = chunk_size or _MAX_CHUNK
            return _scan_topk(lookup_tables(queries, sub_embeddings), codes, k, chunk, padding_idx, pairs, row_scale)
        chunk = chunk_size or _matmul_chunk(batch, d, codes.device)
        return _matmul_topk(queries, sub_embeddings, codes, k, chunk, padding_idx, pairs, row_scale)


def scores_from_codes(
    queries: torch.Tensor,
    sub_embeddings: torch.Tensor,
    codes: torch.Tensor,
    padding_idx: int | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """Full scores ``[B, N]`` equal to ``queries @ decoded.T`` (padding column 0), by the cheaper of a
    torch lookup-table scan and chunked decode + matmul (``method``: ``"auto"``, ``"lut"``, ``"matmul"``).

    With gradients needed (training) it is :func:`pq_scores` or a differentiable decode + matmul.
    """
    _check(queries, sub_embeddings, codes)
    if method not in ("auto", "lut", "matmul"):
        raise TopKError(f"method={method!r} is invalid; choose one of auto, lut, matmul")
    chosen = choose_method(queries, sub_embeddings, codes, full=True) if method == "auto" else method
    batch, d = queries.shape
    n_items = codes.shape[0]
    if torch.is_grad_enabled() and (queries.requires_grad or sub_embeddings.requires_grad):
        if chosen == "lut":
            return pq_scores(queries, sub_embeddings, codes, padding_idx)
        scores = queries.to(sub_embeddings.dtype) @ decode_rows(sub_embeddings, codes).T
        if padding_idx is not None:
            scores = scores.index_fill(1, torch.tensor([padding_idx], device=scores.device), 0.0)
        return scores
    with torch.no_grad():
        queries = queries.to(sub_embeddings.dtype)
        if chosen == "matmul" and 4 * d <= batch:  # the decoded table is under 1/4 of the scores returned
            scores = queries @ decode_rows(sub_embeddings, codes).T
        else:
            scores = torch.empty(batch, n_items, dtype=queries.dtype, device=queries.device)
            if chosen == "matmul":
                chunk = _matmul_chunk(batch, d, codes.device)
                for start in range(0, n_items, chunk):
                    rows = decode_rows(sub_embeddings, codes[start : start + chunk])
                    scores[:, start : start + rows.shape[0]] = queries @ rows.T
            else:
                S = lookup_tables(queries, sub_embeddings)
                use_pairs = kernels.pair_scan_applies(codes)
                for b in range(batch):
                    P = kernels.pair_tables(S[:, b]) if use_pairs else None
                    for start in range(0, n_items, _MAX_CHUNK):
                        part = codes[start : start + _MAX_CHUNK]
                        stop = start + part.shape[0]
                        if use_pairs:
                            kernels.pair_scores(P, part, scores[b, start:stop])
                        else:
                            scores[b, start:stop] = item_major_scores(S[:, b : b + 1], part)[:, 0]
        if padding_idx is not None:
            scores[:, padding_idx] = 0.0
        return scores

"""Code assignment: give every ID a fixed code of ``M`` sub-ids in ``[0, ksub)``.

All functions are deterministic for a given seed and return codes ``[N, M]`` in the smallest
unsigned dtype that holds ``ksub`` values (:func:`code_dtype`).

- :func:`random_codes`   uniform draws per split.
- :func:`svd_codes`      RecJPQ's: truncated SVD of the user x item *training* matrix, then
                         per component quantile-binning into ``ksub`` equal-size bins.
- :func:`svd_pq_codes`   product quantisation of a rank-``d`` truncated SVD (users ``U√s``, items
                         ``V√s``): per split, k-means of ``d / M`` components at once.
- :func:`feature_codes`  PCA of (normalised) side features, binned the same way.
- :func:`kmeans_codes`   per-split k-means of given vectors (product quantisation), with centroids.

Binning breaks ties randomly per split, and random, SVD and feature codes then go through
:func:`distinct_codes` (:mod:`.distinct`), so no two IDs share a whole code while ``ksub**M`` allows.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import scipy.sparse as sp
import torch

from urecjpq_plugin.config import MAX_KSUB, JPQConfigError
from urecjpq_plugin.distinct import distinct_code_fraction, distinct_codes, make_distinct  # noqa: F401 (public here too)
from urecjpq_plugin.rsvd import randomized_svd

logger = logging.getLogger("urecjpq_plugin")
_UNSIGNED = ((2**8, torch.uint8), (2**16, torch.uint16), (2**32, torch.uint32))
_BUCKET_BITS = 20  # quantile_bin's first pass: up to 2^20 buckets by the values' top bits
_TIE_SORT_LIMIT = 1 << 16  # straddling buckets larger than this are checked for one repeated value


def code_dtype(ksub: int) -> torch.dtype:
    """Smallest unsigned dtype holding ``ksub`` distinct sub-ids (uint8 for 256)."""
    for limit, dtype in _UNSIGNED:
        if 2 <= ksub <= limit:
            return dtype
    raise JPQConfigError(f"ksub={ksub!r} is out of range; it must be an integer in [2, {MAX_KSUB}]")


def as_codes(codes: np.ndarray | torch.Tensor, ksub: int) -> torch.Tensor:
    """Check range and cast to :func:`code_dtype`."""
    dtype = code_dtype(ksub)  # first: a bad ksub is named as such, not as out-of-range codes
    codes = torch.as_tensor(codes)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise JPQConfigError(f"codes have dtype {str(codes.dtype).replace('torch.', '')}; give integer sub-ids "
                             f"in [0, {ksub}) (a float such as 0.5 would be silently truncated)")
    if codes.ndim != 2:
        raise JPQConfigError(f"codes must have shape [N, M]; got {tuple(codes.shape)}")
    if codes.numel() and not (codes.dtype == dtype and ksub == 2 ** (8 * dtype.itemsize)):
        low, high = _value_range(codes)
        if low < 0 or high >= ksub:
            raise JPQConfigError(f"codes hold values in [{low}, {high}]; valid sub-ids are [0, {ksub})")
    return codes.to(dtype)


def _value_range(codes: torch.Tensor) -> tuple[int, int]:
    """``(min, max)`` of ``codes`` where they live (one device-to-host read of two numbers, no copy of the
    codes); uint16/uint32, which torch cannot reduce, are widened a chunk at a time."""
    if codes.dtype in (torch.uint16, torch.uint32):
        step = 1 << 20
        parts = [torch.stack(torch.aminmax(codes[s : s + step].to(torch.int64))) for s in range(0, codes.shape[0], step)]
        low_high = torch.stack(parts)
        low, high = low_high[:, 0].min(), low_high[:, 1].max()
    else:
        low, high = torch.aminmax(codes)
    low, high = torch.stack([low.to(torch.int64), high.to(torch.int64)]).tolist()
    return low, high


def log_distinct_fractions(tables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Log each code table's :func:`distinct_code_fraction` (INFO, logger ``urecjpq_plugin``); returns ``tables``."""
    for name, codes in tables.items():
        logger.info(f"urecjpq: {name} codes: distinct-code fraction {distinct_code_fraction(codes):.4f} "
                    f"({codes.shape[0]:,} IDs)")
    return tables


def _numpy_dtype(ksub: int) -> np.dtype:
    return torch.empty(0, dtype=code_dtype(ksub)).numpy().dtype


def _random_subids(n: int, M: int, ksub: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, ksub, size=(n, M), dtype=_numpy_dtype(ksub))


def random_codes(n: int, M: int, ksub: int, seed: int, distinct: bool = True) -> torch.Tensor:
    """Uniform random sub-ids, ``[n, M]``; with ``distinct``, draws that collide are moved apart."""
    codes = _random_subids(n, M, ksub, seed)
    if distinct:
        make_distinct(codes, ksub, seed)
    return torch.from_numpy(codes)


def _split_seeds(seed: int, count: int) -> list[int]:
    """Independent 32-bit seeds, one per split."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(count)]


def _mix32(x: np.ndarray) -> np.ndarray:
    """A bijection of uint32 (lowbias32): turns IDs into a collision-free, random-looking order."""
    x = x ^ (x >> np.uint32(16))
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def _affine_permutation(size: int, seed: int) -> np.ndarray:
    """``(a * i + b) mod size`` for ``i < size``, with seeded ``a`` coprime to ``size``: a permutation."""
    rng = np.random.default_rng(seed)
    a = int(rng.integers(1, max(size, 2)))
    while math.gcd(a, size) != 1:
        a = int(rng.integers(1, size))
    positions = np.arange(size, dtype=np.uint64)
    positions *= np.uint64(a)
    positions += np.uint64(rng.integers(0, size))
    positions %= np.uint64(size)
    return positions.astype(np.int64)


def _sortable(values: np.ndarray) -> np.ndarray:
    """uint32 keys in the order of the float32 values (-0.0 and 0.0 equal)."""
    floats = np.add(values, np.float32(0.0), dtype=np.float32)  # a contiguous copy; -0.0 becomes 0.0
    flip = (floats.view(np.int32) >> np.int32(31)).view(np.uint32)  # all ones for negatives
    flip |= np.uint32(0x80000000)
    key = floats.view(np.uint32)
    key ^= flip
    return key


def _bin_column(values: np.ndarray, ksub: int, seed: int, out: np.ndarray) -> None:
    """``out[i] = rank(i) * ksub // n``, ranking by value and breaking ties by a seeded random order.

    Without a full sort: values go into buckets by their top bits (up to 2^20, ~4n); a bucket whose
    ranks all fall in one bin gives that bin directly, a large one of a single repeated value is
    ranked by a random permutation, and only the other buckets that straddle a bin edge are sorted.
    """
    n = values.shape[0]
    bits = min(_BUCKET_BITS, max(8, n.bit_length() + 2))
    key = _sortable(values)
    bucket = key >> np.uint32(32 - bits)
    counts = np.bincount(bucket, minlength=1 << bits)
    start = np.concatenate(([0], np.cumsum(counts)))  # rank of each bucket's first value
    first_bin = start[:-1] * ksub // n
    straddles = (start[1:] - 1) * ksub // n > first_bin
    out[:] = first_bin.astype(out.dtype)[bucket]
    for b in np.flatnonzero(straddles & (counts > _TIE_SORT_LIMIT)):
        members = np.flatnonzero(bucket == b)
        if key[members].min() == key[members].max():
            # One repeated value (IDs without interactions all sit at 0.0): ranked in a seeded
            # pseudo-random order, an affine permutation of their positions (one pass, where sorting
            # millions of equal keys takes a second and shuffling a quarter of one).
            ranks = start[b] + _affine_permutation(len(members), seed)
            out[members] = ranks * ksub // n
            straddles[b] = False
    inside = np.flatnonzero(straddles[bucket])
    if inside.size:
        tie_break = _mix32(inside.astype(np.uint32) + np.uint32(seed)).astype(np.uint64)
        inside = inside[np.argsort((key[inside].astype(np.uint64) << np.uint64(32)) | tie_break)]
        sorted_before = np.concatenate(([0], np.cumsum(counts * straddles)))[:-1]
        ranks = np.arange(inside.size) + (start[:-1] - sorted_before)[bucket[inside]]
        out[inside] = ranks * ksub // n


def quantile_bin(components: np.ndarray, ksub: int, seed: int = 0) -> torch.Tensor:
    """Per column, rank the values and cut into ``ksub`` equal-count bins, straight into the code dtype.

    Ties are broken by a seeded random order drawn afresh for every column, as RecJPQ's noise does:
    IDs whose components tie (no interactions, the same single user, duplicated rows) then land in
    independent bins per split instead of sharing their whole code. Breaking ties by ID would put
    them in the same bin in every split. Bins are balanced (sizes differ by at most 1). Values are
    ranked as float32.
    """
    n, M = components.shape
    if n >= 2**32:
        raise JPQConfigError(f"{n} rows is too many to bin; at most {2**32 - 1} are supported")
    codes = np.empty((n, M), dtype=_numpy_dtype(ksub))
    if n:
        for k, split_seed in enumerate(_split_seeds(seed, M)):
            _bin_column(components[:, k], ksub, split_seed, codes[:, k])
    return torch.from_numpy(codes)


def _components_or_random(components: np.ndarray, n: int, M: int, ksub: int, seed: int) -> np.ndarray:
    """Bin the available components; splits beyond them (tiny matrices) get random sub-ids."""
    codes = quantile_bin(components, ksub, seed).numpy()
    if codes.shape[1] < M:
        codes = np.concatenate([codes, _random_subids(n, M - codes.shape[1], ksub, seed)], axis=1)
    return codes


def svd_codes(
    interactions: sp.spmatrix, M: int, ksub: int, seed: int, distinct: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """RecJPQ's SVD assignment for users *and* items from one user x item training matrix.

    Item codes come from the item-side singular vectors (rows of ``Vt``), user codes from the
    user-side ones (columns of ``U``), neither scaled by the singular values. With ``distinct``,
    no two IDs of a table share their whole code (:func:`distinct_codes`).
    Returns ``(user_codes [n_users, M], item_codes [n_items, M])``.
    """
    n_users, n_items = interactions.shape
    k = min(M, min(n_users, n_items) - 1)
    if k < 1 or interactions.nnz == 0:
        return (random_codes(n_users, M, ksub, seed, distinct), random_codes(n_items, M, ksub, seed + 1, distinct))
    U, _, Vt = randomized_svd(interactions, k, seed)
    user_codes = _components_or_random(U, n_users, M, ksub, seed)
    del U
    item_codes = _components_or_random(Vt.T, n_items, M, ksub, seed + 1)
    if distinct:
        make_distinct(user_codes, ksub, seed)
        make_distinct(item_codes, ksub, seed + 1)
    return torch.from_numpy(user_codes), torch.from_numpy(item_codes)


# svd_pq: memory for the randomised SVD's two float32 iterates ([rows, rank + oversampling] each);
# the rank shrinks to fit (the full rank d = 64 up to ~2 * 10^6 IDs), so peak memory stays near
# svd_codes' at 10^7 + 10^7 IDs, where the budget leaves svd_codes itself.
SVD_PQ_BYTES = 3 * 2**29


def svd_pq_codes(
    interactions: sp.spmatrix, M: int, ksub: int, seed: int, rank: int, distinct: bool = True,
    normalise: bool = False, unit_rows: bool = False, degree_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes from product quantisation of the rank-``rank`` SVD factors of the training matrix.

    ``normalise``: factorise ``D_u^-1/2 X D_i^-1/2`` (degrees ``D``) instead of ``X``: the matrix a
    LightGCN-style model propagates its rows with, so IDs whose neighbourhoods that propagation mixes
    alike share sub-ids (``svd_pq_norm``).
    ``unit_rows``: quantise each ID's factor row scaled to unit length (its direction; ``svd_pq_cos``).
    On sparse data most IDs have short factor rows, and k-means of the raw rows gives them a few
    shared centroids near zero (TikTok items: one sub-id holds 19.5 % of them per split, against
    8.7 % from directions), so rarely seen IDs become indistinguishable; the degree scale
    (:func:`~urecjpq_plugin.assign.degree_scales`) is what carries how often an ID was seen.

    Users get ``U diag(√s)``, items ``V diag(√s)``, so that their dot products approximate the
    matrix, as a trained factorisation's would; each side is then product-quantised (per split,
    k-means of ``rank / M`` components into ``ksub`` centroids, :class:`~.pq.ProductQuantizer`).
    With ``rank`` = the embedding size, an ID's code is that of the SVD embedding a table of this
    width would hold. Unlike :func:`svd_codes` (one component per split, binned by rank), a split
    sees several components jointly and keeps their scale, so IDs with few interactions (small
    factors) share sub-ids with each other rather than with popular IDs.
    The rank is capped so that the SVD's float32 iterates stay within :data:`SVD_PQ_BYTES`; where
    that leaves fewer than ``2 * M`` components (about 10^7 users + 10^7 items), or the matrix has
    fewer, this is :func:`svd_codes` (one component per split, lean at any size).
    """
    from urecjpq_plugin.pq import ProductQuantizer
    from urecjpq_plugin.rsvd import OVERSAMPLE

    n_users, n_items = interactions.shape
    affordable = SVD_PQ_BYTES // (8 * (n_users + n_items)) - OVERSAMPLE  # two iterates, 4 bytes a float
    usable = (min(rank, min(n_users, n_items) - 1, affordable) // M) * M
    if usable < 2 * M or interactions.nnz == 0:
        return svd_codes(interactions, M, ksub, seed, distinct)
    if normalise:
        interactions = degree_normalised(interactions)
    U, s, Vt = randomized_svd(interactions, usable, seed)
    root = np.sqrt(s).astype(np.float32)
    # Consecutive components per split (split 0: the strongest rank / M). Dealing them round-robin
    # instead (OPQ's eigenvalue allocation) scored lower on Amazon Baby (BPR recall@20 -17 % against
    # -10 % vs uncompressed, 3 seeds), higher on ml-100k (-6 % against -12 %), where svd is better still.
    out = []
    for offset, factors in enumerate((U * root, Vt.T * root)):
        if unit_rows:  # an ID without interactions keeps its zero row
            factors = factors / np.maximum(np.linalg.norm(factors, axis=1, keepdims=True), 1e-12)
        vectors = torch.from_numpy(np.ascontiguousarray(factors, dtype=np.float32))
        weights = None
        if degree_weight:
            degree = np.asarray(interactions.astype(bool).sum(axis=1 - offset), dtype=np.float64).ravel()
            weights = torch.from_numpy(degree ** degree_weight)
        pq = ProductQuantizer(usable, M, ksub, seed + offset).train(vectors, weights)
        codes = pq.encode(vectors).numpy().astype(_numpy_dtype(ksub))
        if distinct:
            make_distinct(codes, ksub, seed + offset)
        out.append(torch.from_numpy(codes))
    return out[0], out[1]


def degree_normalised(interactions: sp.spmatrix) -> sp.csr_matrix:
    """``D_u^-1/2 X D_i^-1/2`` as a new float32 CSR matrix (one copy of ``X``, scaled in place; an ID
    without interactions keeps its zero row)."""
    X = sp.csr_matrix(interactions).astype(np.float32, copy=True)
    user_degree = np.asarray(X.sum(axis=1), dtype=np.float32).ravel()
    item_degree = np.asarray(X.sum(axis=0), dtype=np.float32).ravel()
    X.data *= np.repeat(1.0 / np.sqrt(np.maximum(user_degree, 1.0)), np.diff(X.indptr)).astype(np.float32)
    X.data *= (1.0 / np.sqrt(np.maximum(item_degree, 1.0))).astype(np.float32)[X.indices]
    return X


def feature_codes(features: np.ndarray, M: int, ksub: int, seed: int, distinct: bool = True) -> torch.Tensor:
    """Codes from side features: L2-normalise rows, PCA to ``M`` components, quantile-bin each.

    With ``distinct``, no two rows share their whole code (:func:`distinct_codes`).
    """
    X = np.asarray(features, dtype=np.float32)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    X = X - X.mean(axis=0, keepdims=True)
    k = min(M, min(X.shape) - 1)
    if k < 1:
        return random_codes(X.shape[0], M, ksub, seed, distinct)
    U, _, _ = randomized_svd(sp.csr_matrix(X), k, seed)
    codes = _components_or_random(U, X.shape[0], M, ksub, seed)
    if distinct:
        make_distinct(codes, ksub, seed)
    return torch.from_numpy(codes)


def kmeans_codes(
    vectors: torch.Tensor, M: int, ksub: int, seed: int, iters: int = 25, max_points_per_centroid: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Product quantisation: per split, k-means of the sub-vectors (k-means++ seeding, Lloyd steps).

    ``vectors [N, d]`` -> ``codes [N, M]`` and ``centroids [M, ksub, d/M]`` (the decoded table
    ``centroids[k, codes[:, k]]`` concatenated over ``k`` approximates ``vectors``). As in faiss,
    centroids are trained on at most ``ksub * max_points_per_centroid`` sampled rows; all rows
    are then assigned.
    """
    from urecjpq_plugin.pq import ProductQuantizer  # the one product quantiser

    vectors = torch.as_tensor(vectors, dtype=torch.float32).detach().cpu()
    pq = ProductQuantizer(vectors.shape[1], M, ksub, seed, iters, max_points_per_centroid).train(vectors)
    return as_codes(pq.encode(vectors), ksub), pq.centroids

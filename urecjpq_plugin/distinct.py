"""Distinct codes: no two IDs of a table share their whole code while ``ksub**M`` codes allow it.

IDs with the same code get identical vectors and cannot be told apart by the model. Code
assignment (:mod:`.codes`) breaks ties randomly per split, which leaves few collisions;
:func:`make_distinct` resolves the rest: in each group of equal codes the lowest ID keeps its code
and every other one moves to the nearest free sub-id in one split (distance 1 first, so it stays
next to its group in the binned ordering). Vectorised over the table; the loop runs over the
colliding IDs only.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger("urecjpq_plugin")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_DENSE_LIMIT = 1 << 20  # code spaces up to this size are enumerated when a neighbourhood is full


def _exact(ksub: int, M: int) -> bool:
    return ksub**M <= 2**64


def row_keys(codes: np.ndarray, ksub: int) -> np.ndarray:
    """One uint64 per row, equal only for equal rows: the row's bytes when they are 8 (uint8 x 8),
    else the code read in base ``ksub`` when ``ksub**M <= 2**64``, else a 64-bit hash (two
    different rows share one with probability ~2^-64)."""
    n, M = codes.shape
    if M * codes.itemsize == 8:
        return np.ascontiguousarray(codes).view(np.uint64).reshape(n)
    key = np.zeros(n, dtype=np.uint64)
    exact = _exact(ksub, M)
    for k in range(M):
        column = codes[:, k].astype(np.uint64)
        if exact:
            key *= np.uint64(ksub)
            key += column
        else:
            key += column + np.uint64(1)
            key *= _GOLDEN
            key ^= key >> np.uint64(29)
    return key


def _as_numpy(codes: np.ndarray | torch.Tensor) -> np.ndarray:
    return codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)


def distinct_code_fraction(codes: np.ndarray | torch.Tensor) -> float:
    """Distinct rows / rows of a code table ``[N, M]`` (1.0: every ID has a code of its own)."""
    codes = _as_numpy(codes)
    if codes.shape[0] == 0:
        return 1.0
    keys = np.sort(row_keys(codes, max(2, int(codes.max()) + 1)))
    return (1 + int(np.count_nonzero(keys[1:] != keys[:-1]))) / len(keys)


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def _free_neighbours(code: np.ndarray, ksub: int, used: np.ndarray, taken: set):
    """Free codes that differ from ``code`` in one split, nearest first: by distance in sub-id order,
    then split, then +/-. Lazy, so the IDs of one group resume where the previous one stopped."""
    M = code.shape[0]
    low = 1
    while low < ksub:
        high = min(ksub, 2 * low)
        dist = np.repeat(np.arange(low, high), 2 * M)
        split = np.tile(np.repeat(np.arange(M), 2), high - low)
        value = code[split].astype(np.int64) + dist * np.tile([1, -1], M * (high - low))
        ok = (value >= 0) & (value < ksub)
        cand = np.repeat(code[None], int(ok.sum()), axis=0)
        cand[np.arange(len(cand)), split[ok]] = value[ok]
        keys = row_keys(cand, ksub)
        for i in np.flatnonzero(~_contains(used, keys)):
            if int(keys[i]) not in taken:
                yield cand[i], int(keys[i])
        low = high


def _move_to_near_codes(codes: np.ndarray, movers: np.ndarray, ksub: int, used: np.ndarray, max_dist: int):
    """Vectorised first pass: one-split moves up to ``max_dist``, in :func:`_free_neighbours`'
    order, all movers at once (most find a free code at distance 1). Returns the movers left
    and the keys now taken."""
    M = codes.shape[1]
    taken = np.empty(0, dtype=np.uint64)
    for dist in range(1, min(max_dist, ksub - 1) + 1):
        for k in range(M):
            for sign in (1, -1):
                if not len(movers):
                    return movers, taken
                value = codes[movers, k].astype(np.int64) + sign * dist
                cand = codes[movers].copy()
                cand[:, k] = np.clip(value, 0, ksub - 1)
                keys = row_keys(cand, ksub)
                ok = (value >= 0) & (value < ksub) & ~_contains(used, keys)
                if len(taken):
                    ok &= ~_contains(taken, keys)
                ok &= np.isin(np.arange(len(keys)), np.unique(keys, return_index=True)[1])  # first mover wins
                codes[movers[ok]] = cand[ok]
                taken = np.union1d(taken, keys[ok])
                movers = movers[~ok]
    return movers, taken


def _place_anywhere(codes: np.ndarray, rows: np.ndarray, ksub: int, used: np.ndarray, taken: set, seed: int) -> int:
    """Free codes from anywhere in the space for ``rows`` (whose one-split neighbours are all taken):
    the first free ones of a small space, random draws in a large one. Returns the rows left without."""
    M = codes.shape[1]
    taken_keys = np.fromiter(taken, dtype=np.uint64, count=len(taken))
    if ksub**M <= _DENSE_LIMIT:
        everything = np.indices((ksub,) * M, dtype=codes.dtype).reshape(M, -1).T
        keys = row_keys(everything, ksub)
        spare = everything[~_contains(used, keys) & ~np.isin(keys, taken_keys)][: len(rows)]
        codes[rows[: len(spare)]] = spare
        return len(rows) - len(spare)
    rng = np.random.default_rng(seed)
    for _ in range(64):  # the space is mostly empty: nearly every draw is free
        draw = rng.integers(0, ksub, size=(len(rows), M)).astype(codes.dtype)
        keys = row_keys(draw, ksub)
        free = ~_contains(used, keys) & ~np.isin(keys, taken_keys)
        free &= np.isin(np.arange(len(keys)), np.unique(keys, return_index=True)[1])  # once per batch
        codes[rows[free]] = draw[free]
        taken_keys = np.concatenate([taken_keys, keys[free]])
        rows = rows[~free]
        if not len(rows):
            break
    return len(rows)


def make_distinct(codes: np.ndarray, ksub: int, seed: int = 0) -> int:
    """Move colliding rows of ``codes [N, M]`` (in place) until no two share a code, as far as the
    ``ksub**M`` codes allow; deterministic. Returns the rows that still share (0 unless N > ksub**M)."""
    n, M = codes.shape
    if n < 2 or M == 0:
        return 0
    keys = row_keys(codes, ksub)
    used = np.sort(keys)
    repeats = used[1:] == used[:-1]
    if not repeats.any():
        return 0
    rows = np.flatnonzero(_contains(np.unique(used[1:][repeats]), keys))
    del keys
    # Exact groups of equal rows; rows ascend, so the lowest ID of each group keeps its code.
    _, first, group = np.unique(codes[rows], axis=0, return_index=True, return_inverse=True)
    movers = np.delete(rows, first)
    mover_group = np.delete(group.reshape(-1), first)
    space = ksub**M
    movable = min(len(movers), space - (n - int(np.count_nonzero(repeats))))  # free codes bound the moves
    left = len(movers) - movable
    pending, taken_keys = _move_to_near_codes(codes, movers[:movable], ksub, used, max_dist=2)
    keep = np.isin(movers[:movable], pending)
    movers, mover_group = movers[:movable][keep], mover_group[:movable][keep]
    taken: set[int] = set(taken_keys.tolist())
    searches: dict = {}
    stranded = []
    for row, g in zip(movers, mover_group):
        if g not in searches:
            searches[g] = _free_neighbours(codes[row].copy(), ksub, used, taken)
        code, key = next(searches[g], (None, None))
        if code is None:
            stranded.append(row)
            continue
        codes[row] = code
        taken.add(key)
    if stranded:
        left += _place_anywhere(codes, np.array(stranded), ksub, used, taken, seed)
    if left:
        logger.warning(
            f"urecjpq: {n:,} IDs but only ksub**M = {ksub}**{M} = {space:,} codes; {left:,} IDs share "
            "their code with another (raise jpq_M or jpq_ksub to give every ID its own)"
        )
    return left


def distinct_codes(codes: np.ndarray | torch.Tensor, ksub: int, seed: int = 0) -> torch.Tensor:
    """A copy of ``codes [N, M]`` where no two rows share a code (as far as ``ksub**M`` allows)."""
    array = np.array(_as_numpy(codes), copy=True)
    make_distinct(array, ksub, seed)
    return torch.from_numpy(array)

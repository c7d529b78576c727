"""Distinct codes: no two IDs of a table share their whole code while ``ksub**M`` codes allow it.

IDs with the same code get identical vectors and cannot be told apart by the model. Code
assignment (:mod:`.codes`) breaks ties randomly per split, which leaves few collisions;
:func:`make_distinct` resolves the rest: in each group of equal codes the lowest ID keeps its code
and every other one moves to the nearest free sub-id in one split (distance 1 first, so it stays
next to its group in the binned ordering); when a group's one-split neighbourhood is full, to any
free code. Vectorised over the colliding IDs, in a few rounds (10^7 IDs: seconds).
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


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: a bijection of uint64 that spreads every input bit."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def row_keys(codes: np.ndarray, ksub: int) -> np.ndarray:
    """One uint64 per row, equal only for equal rows, with well-mixed bits: a bijective mix of the
    row's bytes when they are 8 (uint8 x 8) or of the code read in base ``ksub`` when
    ``ksub**M <= 2**64`` (both exact), else a 64-bit hash of the row's bytes, 8 at a time (two
    different rows share one with probability ~2^-64)."""
    n, M = codes.shape
    if M * codes.itemsize == 8:
        return _mix64(np.ascontiguousarray(codes).view(np.uint64).reshape(n).copy())
    if _exact(ksub, M):
        key = np.zeros(n, dtype=np.uint64)
        for k in range(M):
            key *= np.uint64(ksub)
            key += codes[:, k].astype(np.uint64)
        return _mix64(key)
    raw = np.ascontiguousarray(codes).view(np.uint8).reshape(n, -1)
    if raw.shape[1] % 8:
        raw = np.concatenate([raw, np.zeros((n, -raw.shape[1] % 8), dtype=np.uint8)], axis=1)
    words = raw.view(np.uint64)
    key = np.full(n, _GOLDEN, dtype=np.uint64)
    for j in range(words.shape[1]):
        key ^= words[:, j]
        _mix64(key)
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
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def _contains_filtered(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """:func:`_contains` for far more needles than keys: a bitmap of the keys' top bits (16 MB, held
    in cache; :func:`row_keys` mixes them) passes on ~1 needle in 16 to the binary search."""
    shift = np.uint64(64 - 24)
    table = np.zeros(1 << 24, dtype=bool)
    table[sorted_keys >> shift] = True
    candidates = np.flatnonzero(table[keys >> shift])
    found = np.zeros(len(keys), dtype=bool)
    found[candidates] = _contains(sorted_keys, keys[candidates])
    return found


def _merge_sorted(sorted_keys: np.ndarray, new_sorted: np.ndarray) -> np.ndarray:
    """Two sorted key arrays merged (one insert, no re-sort)."""
    return np.insert(sorted_keys, np.searchsorted(sorted_keys, new_sorted), new_sorted)


def _free_first_claims(keys: np.ndarray, valid: np.ndarray, used: np.ndarray, taken: np.ndarray) -> tuple:
    """Which proposals get their code: ``valid``, not in the sorted ``used`` or ``taken``, and the
    first valid proposal of its key. One stable sort of the proposals serves all three tests (the
    binary searches run on sorted needles, several times faster at 10^7 keys). Returns the mask
    and the claimed keys, sorted."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    free = valid[order] & ~_contains(used, ordered) & ~_contains(taken, ordered)
    at = np.flatnonzero(free)
    first = np.concatenate(([True], ordered[at[1:]] != ordered[at[:-1]])) if len(at) else np.zeros(0, dtype=bool)
    at = at[first]
    won = np.zeros(len(keys), dtype=bool)
    won[order[at]] = True
    return won, ordered[at]


def _group_starts(groups: np.ndarray) -> np.ndarray:
    """Start of each run of equal values in ``groups`` (sorted), repeated for every element."""
    starts = np.flatnonzero(np.concatenate(([True], groups[1:] != groups[:-1])))
    return np.repeat(starts, np.diff(np.append(starts, len(groups))))


def _move_to_neighbours(codes: np.ndarray, movers: np.ndarray, groups: np.ndarray, ksub: int, used: np.ndarray):
    """Move each of ``movers`` (sorted by ``groups``, the code group each leaves) to a free code that
    differs from its group's code in one split, nearest first: candidate ``c`` of a group is distance
    ``c // 2M + 1``, split ``c // 2 % M``, sign ``+`` for even ``c``. Vectorised in rounds: the movers
    of a group propose consecutive candidates; out-of-range, used or contested ones propose the
    group's next untried ones. Returns the movers whose neighbourhood ran out, and the keys taken (sorted)."""
    M = codes.shape[1]
    n_candidates = 2 * M * (ksub - 1)
    pending = np.arange(len(movers))
    proposal = pending - _group_starts(groups)  # rank of the mover in its group
    taken = np.empty(0, dtype=np.uint64)
    stranded = []
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    while pending.size:
        over = proposal >= n_candidates
        if over.any():
            stranded.append(movers[pending[over]])
            pending, proposal = pending[~over], proposal[~over]
            if not pending.size:
                break
        rows = movers[pending]
        split, dist = proposal // 2 % M, proposal // (2 * M) + 1
        value = codes[rows, split].astype(np.int64) + np.where(proposal % 2 == 0, dist, -dist)
        candidate = codes[rows]
        ok = (value >= 0) & (value < ksub)
        candidate[np.arange(len(rows)), split] = np.where(ok, value, 0)
        # two groups proposing one free code: the first wins
        ok, claimed = _free_first_claims(row_keys(candidate, ksub), ok, used, taken)
        codes[rows[ok]] = candidate[ok]
        taken = _merge_sorted(taken, claimed)
        # The failed movers of a group propose the candidates after the last one the group tried.
        last_tried = np.zeros(n_groups, dtype=np.int64)
        np.maximum.at(last_tried, groups[pending], proposal)
        pending = pending[~ok]
        g = groups[pending]
        proposal = last_tried[g] + 1 + (np.arange(len(pending)) - _group_starts(g))
    return (np.concatenate(stranded) if stranded else np.empty(0, dtype=movers.dtype)), taken


def _place_anywhere(codes: np.ndarray, rows: np.ndarray, ksub: int, used: np.ndarray, taken: np.ndarray, seed: int) -> int:
    """Free codes from anywhere in the space for ``rows`` (whose one-split neighbours are all taken):
    the first free ones of a small space, random draws in a large one. ``used`` and ``taken`` are
    sorted keys. Returns the rows left without."""
    M = codes.shape[1]
    if ksub**M <= _DENSE_LIMIT:
        everything = np.indices((ksub,) * M, dtype=codes.dtype).reshape(M, -1).T
        keys = row_keys(everything, ksub)
        spare = everything[~_contains(used, keys) & ~_contains(taken, keys)][: len(rows)]
        codes[rows[: len(spare)]] = spare
        return len(rows) - len(spare)
    # A stream of its own: default_rng(seed) may be the one that drew the codes (random_codes), and
    # would redraw their rows.
    rng = np.random.default_rng([seed, 0x5EED])
    for _ in range(64):  # the space is mostly empty: nearly every draw is free
        draw = rng.integers(0, ksub, size=(len(rows), M)).astype(codes.dtype)
        keys = row_keys(draw, ksub)
        free, claimed = _free_first_claims(keys, np.ones(len(keys), dtype=bool), used, taken)
        codes[rows[free]] = draw[free]
        taken = _merge_sorted(taken, claimed)
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
    shared = used[1:][repeats]  # sorted, a key once per extra row
    shared = shared[np.concatenate(([True], shared[1:] != shared[:-1]))]
    rows = np.flatnonzero(_contains_filtered(shared, keys))
    # Groups of equal codes, by key then ID (rows ascend): the lowest ID of each group keeps its code.
    grouped = keys[rows]
    del keys
    order = np.argsort(grouped, kind="stable")
    rows, grouped = rows[order], grouped[order]
    first = np.concatenate(([True], grouped[1:] != grouped[:-1]))
    movers, groups = rows[~first], np.cumsum(first)[~first] - 1
    space = ksub**M
    movable = min(len(movers), space - (n - int(np.count_nonzero(repeats))))  # free codes bound the moves
    left = len(movers) - movable
    if movable < len(movers):  # keep the lowest IDs' moves
        keep = np.isin(movers, np.sort(movers)[:movable])
        movers, groups = movers[keep], groups[keep]
    stranded, taken = _move_to_neighbours(codes, movers, groups, ksub, used)
    if len(stranded):
        left += _place_anywhere(codes, np.sort(stranded), ksub, used, taken, seed)
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

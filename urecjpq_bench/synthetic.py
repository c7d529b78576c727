"""Synthetic implicit feedback with structure to learn, generated in bounded memory up to 10^7 IDs.

Latent-factor model with one-hot factors (latent clusters): every item belongs to one of ``K``
clusters and has a Zipf popularity by its rank inside the cluster; every user belongs to one
cluster. Each of a user's draws is, with probability ``in_cluster``, an item of the user's cluster
(popularity-weighted), otherwise an item of the whole catalogue (popularity-weighted)::

    P(i | u) = in_cluster * w_i [c_i = c_u] / W_{c_u}  +  (1 - in_cluster) * w_i / W

Users are generated in chunks (draws by inverse-CDF ``searchsorted`` on one cumulative-popularity
array), duplicates dropped, and one random interaction per user with >= 2 held out as its test
item. Memory: ~8 bytes per catalogue item plus ~4 bytes per kept interaction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from urecjpq_plugin.config import URecJPQError


class SyntheticConfigError(URecJPQError):
    """A synthetic-data parameter is out of range."""


@dataclass
class SyntheticData:
    """Training interactions as CSR parts (rows = users) plus one held-out item per test user."""

    n_users: int
    n_items: int
    indptr: np.ndarray  # int64 [n_users + 1]
    items: np.ndarray  # int32 [nnz], sorted within each user
    test_users: np.ndarray  # int32 [n_test]
    test_items: np.ndarray  # int32 [n_test]
    user_cluster: np.ndarray  # int32 [n_users] (ground truth, for checks)
    item_cluster: np.ndarray  # int32 [n_items]

    @property
    def nnz(self) -> int:
        return int(self.items.shape[0])

    def train_csr(self) -> sp.csr_matrix:
        """User x item training matrix of ones (shares ``items``; adds 4 bytes per interaction)."""
        data = np.ones(self.nnz, dtype=np.float32)
        return sp.csr_matrix((data, self.items, self.indptr), shape=(self.n_users, self.n_items))

    def user_items(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.indptr, self.items, self.test_users, self.test_items,
                                      self.user_cluster, self.item_cluster))


def _check(n_users: int, n_items: int, per_user: int, n_clusters: int, in_cluster: float) -> None:
    for name, value, low in (("n_users", n_users, 2), ("n_items", n_items, 2), ("per_user", per_user, 1),
                             ("n_clusters", n_clusters, 1)):
        if int(value) != value or value < low:
            raise SyntheticConfigError(f"{name}={value!r} is invalid; it must be an integer >= {low}")
    if n_items >= 2**31:
        raise SyntheticConfigError(f"n_items={n_items} does not fit int32 item ids; use < 2**31")
    if n_clusters > n_items:
        raise SyntheticConfigError(f"n_clusters={n_clusters} exceeds n_items={n_items}")
    if not 0.0 <= in_cluster <= 1.0:
        raise SyntheticConfigError(f"in_cluster={in_cluster!r} is invalid; it must be in [0, 1]")


def generate(
    n_users: int,
    n_items: int,
    per_user: int = 10,
    n_clusters: int = 128,
    in_cluster: float = 0.8,
    zipf: float = 1.0,
    seed: int = 0,
    chunk: int = 1 << 18,
) -> SyntheticData:
    """Draw ``per_user`` items per user (fewer after de-duplication); deterministic for ``seed``."""
    _check(n_users, n_items, per_user, n_clusters, in_cluster)
    rng = np.random.default_rng(seed)
    item_cluster = rng.integers(0, n_clusters, size=n_items, dtype=np.int32)
    order = np.argsort(item_cluster, kind="stable").astype(np.int32)  # position -> item, grouped by cluster
    bounds = np.searchsorted(item_cluster[order], np.arange(n_clusters + 1)).astype(np.int64)
    # Zipf weight by rank inside the cluster (rank 0 = the item first in `order`, i.e. a random one).
    rank = np.arange(n_items, dtype=np.float64) - np.repeat(bounds[:-1], np.diff(bounds))
    cum = np.cumsum((rank + 1.0) ** -zipf)
    del rank
    cum_lo = np.concatenate([[0.0], cum])[bounds[:-1]]  # cumulative weight before each cluster
    cum_hi = np.concatenate([[0.0], cum])[bounds[1:]]
    user_cluster = rng.integers(0, n_clusters, size=n_users, dtype=np.int32)

    parts_items, counts_all, test_u, test_i = [], [], [], []
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        n = stop - start
        c = np.repeat(user_cluster[start:stop], per_user)
        r = rng.random(n * per_user)
        local = rng.random(n * per_user) < in_cluster
        target = np.where(local, cum_lo[c] + r * (cum_hi[c] - cum_lo[c]), r * cum[-1])
        pos = np.minimum(np.searchsorted(cum, target, side="right"), n_items - 1)
        # Empty clusters (possible when n_clusters ~ n_items) fall back to the global draw above.
        items = order[pos]
        key = np.unique(np.repeat(np.arange(n, dtype=np.int64), per_user) * n_items + items)
        users, items = key // n_items, (key % n_items).astype(np.int32)
        counts = np.bincount(users, minlength=n)
        # Hold out one random interaction of every user with >= 2.
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        has_test = counts >= 2
        pick = first[has_test] + (rng.random(int(has_test.sum())) * counts[has_test]).astype(np.int64)
        test_u.append((np.flatnonzero(has_test) + start).astype(np.int32))
        test_i.append(items[pick])
        keep = np.ones(items.shape[0], dtype=bool)
        keep[pick] = False
        parts_items.append(items[keep])
        counts_all.append(counts - has_test)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.concatenate(counts_all), out=indptr[1:])
    return SyntheticData(
        n_users, n_items, indptr, np.concatenate(parts_items), np.concatenate(test_u), np.concatenate(test_i),
        user_cluster, item_cluster,
    )

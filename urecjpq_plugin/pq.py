"""One product quantiser (faiss naming: ``M`` splits of ``dsub = d / M`` columns, ``ksub`` centroids each).

``ProductQuantizer(d, M, ksub).train(x)`` learns ``centroids [M, ksub, dsub]`` by per-split k-means
(k-means++ seeding, Lloyd steps, trained on at most ``ksub * max_points_per_centroid`` sampled rows,
as faiss does); ``encode`` gives each row its nearest centroid per split, ``decode`` concatenates
them back. A split holding at most ``ksub`` distinct sub-vectors is quantised exactly (its distinct
values are the centroids), so a table that already is a product of codes and centroids round-trips.

Relative error, the one definition used everywhere: ``||x - decode(encode(x))||_F / ||x||_F``
(a norm ratio, not squared; 0 is exact).

Codes are returned as ``int64``; :func:`urecjpq_plugin.codes.as_codes` casts them to the compact
unsigned dtype. No host framework and no other plugin module is imported here.
"""

from __future__ import annotations

import torch

from urecjpq_plugin.config import JPQConfigError


def decode_rows(centroids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``codes [n, M]`` -> rows ``[n, M * dsub]``: the concatenated ``centroids [M, ksub, dsub]`` they name.

    The plugin's one decode (quantiser, compress, top-k; :class:`~urecjpq_plugin.jpq.JPQEmbedding`
    gathers the same flat rows with a backward of its own). One ``index_select`` on the flattened
    codebook with an int32 row index (cheaper to build than int64), not a loop over splits.
    """
    M, ksub, dsub = centroids.shape
    rows = codes.to(torch.int32) + torch.arange(0, M * ksub, ksub, dtype=torch.int32, device=codes.device)
    return centroids.reshape(M * ksub, dsub).index_select(0, rows.reshape(-1)).reshape(codes.shape[0], M * dsub)


def relative_error(x: torch.Tensor, approx: torch.Tensor) -> float:
    """``||x - approx||_F / ||x||_F``: the plugin's one reconstruction error (a norm ratio; 0 is exact)."""
    x = torch.as_tensor(x).detach().float().cpu()
    approx = torch.as_tensor(approx).detach().float().cpu()
    return float((approx - x).norm() / x.norm().clamp_min(1e-12))


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest row of ``centroids [k, dsub]`` for each row of ``x [n, dsub]``, in bounded memory."""
    out = torch.empty(x.shape[0], dtype=torch.long)
    c_sq = (centroids * centroids).sum(1)
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk]
        dist = c_sq[None, :] - 2 * block @ centroids.T  # ||x||^2 is the same for every centroid of a row
        out[start : start + chunk] = dist.argmin(1)
    return out


def kmeans_plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centroid drawn with probability ~ squared distance to the chosen ones."""
    centroids = x[torch.randint(len(x), (1,), generator=gen)]
    best = ((x - centroids[0]) ** 2).sum(1)
    for _ in range(1, k):
        if best.sum() <= 0:  # fewer distinct points than centroids: repeat one, it stays unused
            pick = torch.randint(len(x), (1,), generator=gen)
        else:
            pick = torch.multinomial(best, 1, generator=gen)
        centroids = torch.cat([centroids, x[pick]])
        best = torch.minimum(best, ((x - x[pick]) ** 2).sum(1))
    return centroids


def kmeans(x: torch.Tensor, k: int, gen: torch.Generator, iters: int) -> torch.Tensor:
    """Lloyd's k-means from k-means++ seeds; empty clusters keep their seed. Returns ``[k, dsub]``."""
    centroids = kmeans_plus_plus(x, k, gen)
    for _ in range(iters):
        assign = nearest_centroid(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


class ProductQuantizer:
    """Per-split k-means quantiser of ``[N, d]`` vectors; deterministic for a given ``seed``."""

    def __init__(self, d: int, M: int, ksub: int, seed: int = 0, iters: int = 25, max_points_per_centroid: int = 256):
        if M < 1 or d % M:
            raise JPQConfigError(f"d={d} should be a multiple of M={M}")
        if ksub < 2:
            raise JPQConfigError(f"ksub={ksub} is invalid; it must be at least 2")
        if iters < 1:
            raise JPQConfigError(f"iters={iters} is invalid; it must be 1 or more")
        self.d, self.M, self.ksub, self.dsub = d, M, ksub, d // M
        self.seed, self.iters, self.max_points_per_centroid = seed, iters, max_points_per_centroid
        self.centroids: torch.Tensor | None = None  # [M, ksub, dsub] once trained

    def _vectors(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float32)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise JPQConfigError(f"vectors have shape {tuple(x.shape)}; this quantiser takes [N, {self.d}]")
        return x

    def _split(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return x[:, k * self.dsub : (k + 1) * self.dsub]

    def _trained(self) -> torch.Tensor:
        if self.centroids is None:
            raise JPQConfigError("the product quantiser is not trained; call train(x) first")
        return self.centroids

    def train(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> ProductQuantizer:
        """Learn the centroids of every split from ``x [N, d]`` (N >= 1).

        ``weights [N]`` (non-negative, not all zero): weighted k-means, by drawing the training sample with
        replacement in proportion to them; rows weighted more get centroids nearer to them.
        """
        x = self._vectors(x)
        if x.shape[0] == 0:
            raise JPQConfigError("cannot train a product quantiser on 0 vectors")
        gen = torch.Generator().manual_seed(self.seed)
        limit = self.ksub * self.max_points_per_centroid
        if weights is None:
            sample = torch.randperm(x.shape[0], generator=gen)[:limit]
        else:
            weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
            cdf = weights.cumsum(0)
            if (weights.shape[0] != x.shape[0] or bool((weights < 0).any()) or not bool(torch.isfinite(cdf[-1]))
                    or float(cdf[-1]) <= 0):
                raise JPQConfigError(
                    f"weights have {weights.shape[0]} values (min {float(weights.min()) if len(weights) else None}, "
                    f"sum {float(cdf[-1]) if len(cdf) else None}); {x.shape[0]} vectors take {x.shape[0]} finite "
                    "non-negative weights, not all zero")
            draws = torch.rand(min(x.shape[0], limit), generator=gen, dtype=torch.float64) * cdf[-1]
            sample = torch.searchsorted(cdf, draws, right=True).clamp_(max=x.shape[0] - 1)
        centroids = torch.empty(self.M, self.ksub, self.dsub)
        for k in range(self.M):
            points = self._split(x[sample], k).contiguous()
            # Few distinct values (checked on the sample first, which is cheap): they are the centroids,
            # exactly; the extra centroids repeat one and stay unused.
            distinct = torch.unique(points, dim=0)
            if distinct.shape[0] <= self.ksub and len(sample) < x.shape[0]:
                distinct = torch.unique(self._split(x, k), dim=0)
            if distinct.shape[0] <= self.ksub:
                centroids[k] = torch.cat([distinct, distinct[:1].expand(self.ksub - distinct.shape[0], -1)])
            else:
                centroids[k] = kmeans(points, self.ksub, gen, self.iters)
        self.centroids = centroids
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, d]`` -> codes ``[N, M]`` (int64): the nearest centroid of each split."""
        x, centroids = self._vectors(x), self._trained()
        codes = torch.empty(x.shape[0], self.M, dtype=torch.long)
        for k in range(self.M):
            codes[:, k] = nearest_centroid(self._split(x, k), centroids[k])
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [N, M]`` -> vectors ``[N, d]`` (concatenated centroids)."""
        centroids = self._trained()
        codes = torch.as_tensor(codes).long()
        if codes.ndim != 2 or codes.shape[1] != self.M:
            raise JPQConfigError(f"codes have shape {tuple(codes.shape)}; this quantiser decodes [N, {self.M}]")
        return decode_rows(centroids, codes)

    def relative_error(self, x: torch.Tensor) -> float:
        """:func:`relative_error` of ``x`` and ``decode(encode(x))``: ``||x - x_hat||_F / ||x||_F``."""
        x = self._vectors(x)
        return relative_error(x, self.decode(self.encode(x)))

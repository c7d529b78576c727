"""Plain-torch BPR for the scale bench: ``nn.Embedding`` tables or :class:`JPQEmbedding` tables.

Sparse-friendly on both sides, so neither pays for the other's weakness: the uncompressed baseline
uses ``nn.Embedding(sparse=True)`` + ``SparseAdam`` (a step touches only the batch's rows; Adam's
two moment tables are still ``2 x`` the table), jpq uses a dense ``Adam`` on its small codebooks.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from urecjpq_plugin.config import SPLIT_DROPOUT
from urecjpq_plugin.jpq import JPQEmbedding
from urecjpq_bench.synthetic import SyntheticData

INIT_STD = 0.1


def plain_table(n: int, d: int) -> nn.Embedding:
    table = nn.Embedding(n, d, sparse=True)
    nn.init.normal_(table.weight, std=INIT_STD)
    return table


def jpq_table(codes: torch.Tensor, ksub: int, d: int, row_scale: torch.Tensor | None = None,
              unit_rows: bool = False) -> JPQEmbedding:
    table = JPQEmbedding(codes, ksub, d, split_dropout=SPLIT_DROPOUT)
    nn.init.normal_(table.sub_embeddings, std=INIT_STD)
    table.set_row_scale(row_scale)
    if unit_rows:
        table.set_unit_rows()
    return table


class BPR(nn.Module):
    def __init__(self, user: nn.Module, item: nn.Module):
        super().__init__()
        self.user, self.item = user, item

    def loss(self, u: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        eu, ei, ej = self.user(u), self.item(i), self.item(j)
        return -F.logsigmoid((eu * (ei - ej)).sum(-1)).mean()


def build(data: SyntheticData, variant: str, d: int, codes: tuple | None, ksub: int, seed: int, lr: float):
    """-> (model, optimizer); ``codes`` = ``(user_codes, item_codes, row_scales, unit_rows)`` for jpq (see
    :func:`assign_codes`)."""
    torch.manual_seed(seed)
    if variant == "base":
        model = BPR(plain_table(data.n_users, d), plain_table(data.n_items, d))
        return model, torch.optim.SparseAdam(list(model.parameters()), lr=lr)
    scales = codes[2] if len(codes) > 2 else {}
    unit = bool(codes[3]) if len(codes) > 3 else False
    model = BPR(jpq_table(codes[0], ksub, d, scales.get("user"), unit), jpq_table(codes[1], ksub, d, scales.get("item"), unit))
    return model, torch.optim.Adam(model.parameters(), lr=lr)


def assign_codes(data: SyntheticData, M: int, ksub: int, seed: int, d: int) -> tuple[torch.Tensor, torch.Tensor, dict, bool]:
    """The plugin's defaults for a BPR model (``jpq_code_assign``, ``jpq_degree_scale``, ``jpq_unit_rows``: auto)
    from the training matrix: ``(user_codes, item_codes, row_scales, unit_rows)``."""
    from urecjpq_plugin.assign import assign_codes as plugin_assign
    from urecjpq_plugin.assign import degree_scales, resolve_unit_rows
    from urecjpq_plugin.config import JPQConfig

    config, train = JPQConfig(M=M, ksub=ksub, seed=seed, dim=d), data.train_csr()
    codes = plugin_assign(config, train)
    return codes["user"], codes["item"], degree_scales(config, train), resolve_unit_rows(config, train)


def batches(data: SyntheticData, batch: int, steps: int, seed: int):
    """Uniform (user, positive, uniform-negative) triples drawn from the training interactions."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, data.nnz, size=batch)
        users = np.searchsorted(data.indptr, idx, side="right") - 1
        yield (torch.from_numpy(users), torch.from_numpy(data.items[idx].astype(np.int64)),
               torch.from_numpy(rng.integers(0, data.n_items, size=batch)))


def train(model: BPR, opt: torch.optim.Optimizer, data: SyntheticData, steps: int, batch: int, seed: int) -> dict:
    """Time every step (forward + backward + optimizer), sampling excluded."""
    times, losses = [], []
    for u, i, j in batches(data, batch, steps, seed):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model.loss(u, i, j)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    tail = max(1, len(losses) // 10)
    return {
        "steps": steps, "batch": batch, "train_seconds": sum(times),
        "step_ms_median": float(np.median(times[min(5, len(times) - 1):])) * 1e3,
        "loss_first": float(np.mean(losses[:tail])), "loss_last": float(np.mean(losses[-tail:])),
    }


@torch.no_grad()
def recall_at(model: BPR, data: SyntheticData, k: int = 20, n_eval: int = 500, seed: int = 0,
              user_batch: int = 128, item_chunk: int = 1 << 19) -> float:
    """Full-catalogue recall@k of the held-out item on ``n_eval`` sampled test users, training items masked.

    Items are scored in chunks (``table(ids)`` works for both table kinds), so memory stays at
    ``user_batch x item_chunk`` scores whatever the catalogue size.
    """
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(data.test_users), size=min(n_eval, len(data.test_users)), replace=False)
    hits = 0
    for b in range(0, len(pick), user_batch):
        rows = pick[b : b + user_batch]
        users = torch.from_numpy(data.test_users[rows].astype(np.int64))
        q = model.user(users)
        best_s = torch.full((len(rows), k), -float("inf"))
        best_i = torch.zeros((len(rows), k), dtype=torch.long)
        for start in range(0, data.n_items, item_chunk):
            ids = torch.arange(start, min(start + item_chunk, data.n_items))
            scores = q @ model.item(ids).T
            for r, u in enumerate(users.tolist()):
                seen = data.user_items(u)
                seen = seen[(seen >= start) & (seen < start + item_chunk)] - start
                scores[r, torch.from_numpy(seen.astype(np.int64))] = -float("inf")
            s, i = scores.topk(min(k, scores.shape[1]), dim=1)
            merged_s, pos = torch.cat([best_s, s], 1).topk(k, dim=1)
            best_i = torch.cat([best_i, i + start], 1).gather(1, pos)
            best_s = merged_s
        truth = torch.from_numpy(data.test_items[rows].astype(np.int64))
        hits += int((best_i == truth[:, None]).any(1).sum())
    return hits / len(pick)


def popularity_recall(data: SyntheticData, k: int = 20, n_eval: int = 500, seed: int = 0) -> float:
    """Same users and masking, ranking by training popularity: the bar a learnt model must clear."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(data.test_users), size=min(n_eval, len(data.test_users)), replace=False)
    counts = np.bincount(data.items, minlength=data.n_items)
    top = np.argsort(-counts, kind="stable")[: k + int(np.diff(data.indptr).max())]
    hits = 0
    for r in pick:
        u = data.test_users[r]
        ranked = top[~np.isin(top, data.user_items(u))][:k]
        hits += int(data.test_items[r] in ranked)
    return hits / len(pick)

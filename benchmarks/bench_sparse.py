"""Learning curves and code diagnostics of BPR, uncompressed against compressed, on a pre-split dataset.

    OMP_NUM_THREADS=1 python benchmarks/bench_sparse.py --data ../shared/datasets/baby/baby.inter \
        [--variants svd@0:0,svd_pq:0,svd_pq,auto] [--seeds 2020,2021,2022] [--out docs/results/baby-curves]

Plain PyTorch BPR with RecBole's training defaults (xavier-normal tables, Adam lr 0.001, batch 2048,
one uniform negative per positive, full-sort validation recall@20 after every epoch, early stopping
after 10 epochs without gain, test on the best epoch), so that every epoch's curve is at hand. The
compressed variants go through the plugin's public API (``apply_jpq`` with the training matrix);
a variant is a ``jpq_code_assign`` value, optionally ``@`` a ``jpq_split_dropout`` and ``:`` a
``jpq_degree_scale`` (``svd@0:0``: the defaults before sparse catalogues were measured; ``svd_pq:0``:
svd_pq codes and split dropout without the degree scale; ``svd_pq``: the same with the degree scale, the
defaults until codes from directions; ``auto``: today's defaults, svd_pq_cos codes on sparse data).
Per variant and seed it records, per epoch: train loss, valid recall@20 and NDCG@20, the share of
the 100 most popular items in the top-20 lists, and catalogue coverage of the top-20 lists. Then:

- ``results.json``: every curve and the test metrics; mean ± std over seeds printed as a table;
- ``curves.png``: valid recall@20 per epoch, one line per variant (mean over seeds);
- code diagnostics against the first seed's trained uncompressed tables: how often an item's 10
  nearest neighbours (cosine) share its sub-id, per split, and the relative error of the best
  reconstruction those codes allow (per split, the mean of the vectors sharing a sub-id).

The data file is MMRec's format (``userID itemID rating timestamp x_label``; 0/1/2 = train/valid/test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from urecjpq_plugin import JPQConfig, apply_jpq
from urecjpq_plugin.assign import assign_codes

TOPK = 20


def load_presplit(path: str) -> list[sp.csr_matrix]:
    """Train, valid and test user x item 0/1 matrices of an MMRec-format ``.inter`` file."""
    with open(path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
    cols = [header.index(c) for c in ("userID", "itemID", "x_label")]
    table = np.loadtxt(path, delimiter="\t", skiprows=1, usecols=cols, dtype=np.int64, ndmin=2)
    shape = (int(table[:, 0].max()) + 1, int(table[:, 1].max()) + 1)
    out = []
    for label in (0, 1, 2):
        rows = table[table[:, 2] == label]
        m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows[:, 0], rows[:, 1])), shape=shape)
        m.data[:] = 1
        out.append(m)
    return out


class BPR(nn.Module):
    """RecBole's BPR: two tables, dot-product scores, xavier-normal initialisation."""

    def __init__(self, n_users: int, n_items: int, dim: int = 64):
        super().__init__()
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)

    def loss(self, u, i, j):
        ue = self.user_embedding(u)
        return -F.logsigmoid((ue * self.item_embedding(i)).sum(-1) - (ue * self.item_embedding(j)).sum(-1)).mean()

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.user_embedding.weight.detach().clone(), self.item_embedding.weight.detach().clone()


def evaluate(users_w, items_w, seen: sp.csr_matrix, target: sp.csr_matrix, top100: np.ndarray):
    """Recall@20, NDCG@20 (RecBole's definitions), top-100 share and coverage of the top-20 lists."""
    users = np.unique(target.nonzero()[0])
    discount = 1 / np.log2(np.arange(2, TOPK + 2))
    recall, ndcg, tops = [], [], []
    for start in range(0, len(users), 4096):
        batch = users[start : start + 4096]
        scores = users_w[torch.from_numpy(batch)] @ items_w.T
        mask = seen[batch].tocoo()
        scores[torch.from_numpy(mask.row).long(), torch.from_numpy(mask.col).long()] = -torch.inf
        top = scores.topk(TOPK).indices.numpy()
        tops.append(top)
        truth = target[batch]
        for r in range(len(batch)):
            relevant = truth.indices[truth.indptr[r] : truth.indptr[r + 1]]
            hit = np.isin(top[r], relevant)
            recall.append(hit.sum() / len(relevant))
            ndcg.append((hit * discount).sum() / discount[: min(len(relevant), TOPK)].sum())
    tops = np.concatenate(tops)
    return {"recall@20": float(np.mean(recall)), "ndcg@20": float(np.mean(ndcg)),
            "top100_share": float(np.isin(tops, top100).mean()), "coverage": len(np.unique(tops)) / items_w.shape[0]}


def parse_variant(variant: str) -> tuple[str, str, str]:
    """``code_assign[@split_dropout][:degree_scale]`` -> its three parts ('' where not given)."""
    rest, _, scale = variant.partition(":")
    code, _, dropout = rest.partition("@")
    return code, dropout, scale


def variant_config(variant: str, M, ksub: int, seed: int) -> JPQConfig:
    """``code_assign[@split_dropout][:degree_scale]`` -> the JPQConfig it names (defaults elsewhere)."""
    code, dropout, scale = parse_variant(variant)
    extra = {"split_dropout": float(dropout)} if dropout else {}
    extra.update({"degree_scale": float(scale)} if scale else {})
    if code != "auto":  # the named variants predate jpq_unit_rows and keep plain rows; "auto" is today's defaults
        extra["unit_rows"] = False
    return JPQConfig(M=M, ksub=ksub, code_assign=code, seed=seed, **extra)


def train(variant: str, train_m, valid_m, test_m, seed: int, epochs: int, patience: int, M, ksub: int) -> dict:
    torch.manual_seed(seed)
    model = BPR(*train_m.shape)
    if variant != "uncompressed":
        apply_jpq(model, variant_config(variant, M, ksub, seed),
                  {"user": train_m.shape[0], "item": train_m.shape[1]}, interactions=train_m)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    coo = train_m.tocoo()
    U, I = torch.from_numpy(coo.row).long(), torch.from_numpy(coo.col).long()
    gen = torch.Generator().manual_seed(seed)
    top100 = np.argsort(-np.asarray(train_m.sum(0)).ravel())[:100]
    curve, best, best_epoch, best_tables = [], -1.0, 0, None
    for epoch in range(epochs):
        order = torch.randperm(len(U), generator=gen)
        negatives = torch.randint(0, train_m.shape[1], (len(U),), generator=gen)
        total = 0.0
        for start in range(0, len(U), 2048):
            idx = order[start : start + 2048]
            loss = model.loss(U[idx], I[idx], negatives[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        tables = model.tables()
        point = {"epoch": epoch, "loss": total / len(U), **evaluate(*tables, train_m, valid_m, top100)}
        curve.append(point)
        if point["recall@20"] > best:
            best, best_epoch, best_tables = point["recall@20"], epoch, tables
        elif epoch - best_epoch >= patience:
            break
    test = evaluate(*best_tables, train_m + valid_m, test_m, top100)
    return {"variant": variant, "seed": seed, "best_epoch": best_epoch, "curve": curve, "test": test,
            "tables": best_tables}


def code_diagnostics(item_w: torch.Tensor, codes: torch.Tensor, neighbours: int = 10) -> dict:
    """Share of an item's nearest neighbours (cosine) with its sub-id, per split; reconstruction error."""
    x = F.normalize(item_w, dim=1)
    sim = x @ x.T
    sim.fill_diagonal_(-2)
    nn_idx = sim.topk(neighbours, dim=1).indices
    codes = codes.long()
    share = (codes[nn_idx] == codes[:, None, :]).float().mean(dim=(0, 1))
    M = codes.shape[1]
    dsub = item_w.shape[1] // M
    err = 0.0
    for k in range(M):
        sub = item_w[:, k * dsub : (k + 1) * dsub]
        c = codes[:, k]
        centroid = torch.zeros(int(c.max()) + 1, dsub).index_add_(0, c, sub) / torch.bincount(c).clamp_min(1)[:, None]
        err += float(((sub - centroid[c]) ** 2).sum())
    return {"neighbour_share_mean": float(share.mean()), "neighbour_share_max": float(share.max()),
            "chance": 1 / float(codes.max() + 1), "reconstruction_error": (err / float((item_w**2).sum())) ** 0.5}


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for variant in dict.fromkeys(r["variant"] for r in results):
        curves = [[p["recall@20"] for p in r["curve"]] for r in results if r["variant"] == variant]
        length = max(map(len, curves))
        mean = [np.mean([c[e] for c in curves if e < len(c)]) for e in range(length)]
        code, dropout, scale = parse_variant(variant)
        label = variant if variant == "uncompressed" else (
            f"jpq, codes {code}, split dropout {dropout or JPQConfig.split_dropout}, degree scale {scale or 'auto'}")
        ax.plot(range(length), mean, marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid recall@20 (mean over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="MMRec-format <name>.inter (x_label 0/1/2)")
    p.add_argument("--variants", default="svd@0:0,svd_pq:0,svd_pq,auto",
                   help="compressed variants: jpq_code_assign[@jpq_split_dropout][:jpq_degree_scale], comma-separated")
    p.add_argument("--seeds", default="2020,2021,2022")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--M", default="auto")
    p.add_argument("--ksub", type=int, default=256)
    p.add_argument("--out", default="bench-results/sparse")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train_m, valid_m, test_m = load_presplit(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = ["uncompressed"] + [v.strip() for v in args.variants.split(",") if v.strip()]
    M = args.M if args.M == "auto" else int(args.M)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in seeds:
        for variant in variants:
            start = time.perf_counter()
            run = train(variant, train_m, valid_m, test_m, seed, args.epochs, args.patience, M, args.ksub)
            results.append(run)
            print(f"{variant} seed {seed}: best epoch {run['best_epoch']}, test recall@20 "
                  f"{run['test']['recall@20']:.4f} ndcg@20 {run['test']['ndcg@20']:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    base = {m: np.mean([r["test"][m] for r in results if r["variant"] == "uncompressed"]) for m in ("recall@20", "ndcg@20")}
    lines = ["| variant | seeds | recall@20 | ndcg@20 | best epoch | top-100 share | coverage |", "|---|---|---|---|---|---|---|"]
    for variant in variants:
        runs = [r for r in results if r["variant"] == variant]
        cells = []
        for metric in ("recall@20", "ndcg@20"):
            values = np.array([r["test"][metric] for r in runs])
            change = "" if variant == "uncompressed" else f" ({100 * (values.mean() / base[metric] - 1):+.1f}%)"
            cells.append(f"{values.mean():.4f} ± {values.std():.4f}{change}")
        epochs = "/".join(str(r["best_epoch"]) for r in runs)
        share = np.mean([r["test"]["top100_share"] for r in runs])
        coverage = np.mean([r["test"]["coverage"] for r in runs])
        lines.append(f"| {variant} | {len(runs)} | {cells[0]} | {cells[1]} | {epochs} | {share:.2f} | {coverage:.2f} |")
    # Code diagnostics against the first seed's trained uncompressed item table.
    item_w = next(r for r in results if r["variant"] == "uncompressed")["tables"][1]
    diag = {}
    for variant in variants[1:]:
        cfg = variant_config(variant, M, args.ksub, seeds[0]).for_dims([item_w.shape[1]])
        diag[variant] = code_diagnostics(item_w, assign_codes(cfg, train_m)["item"])
    lines += ["", "| codes | item 10-NN sharing its sub-id (mean / best split) | chance | reconstruction error |",
              "|---|---|---|---|"]
    for variant, d in diag.items():
        lines.append(f"| {variant} | {d['neighbour_share_mean']:.3f} / {d['neighbour_share_max']:.3f} | "
                     f"{d['chance']:.4f} | {d['reconstruction_error']:.3f} |")
    table = "\n".join(lines)
    print(table)
    (out / "results.md").write_text(table + "\n")
    for r in results:
        r.pop("tables")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "runs": results, "codes": diag}, indent=1))
    plot(results, out / "curves.png", f"BPR on {Path(args.data).stem}: valid recall@20 per epoch")
    print(f"outputs: {out}/results.md, results.json, curves.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

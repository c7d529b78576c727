"""Post-hoc compression of a trained model: product-quantise its ID tables (any PyTorch model).

:func:`quantize_table` turns a trained ``[N, d]`` table into codes and centroids with the plugin's
one product quantiser (:class:`urecjpq_plugin.pq.ProductQuantizer`); :func:`quantize_model` does it
for every ID table of a model and swaps them in through :func:`urecjpq_plugin.apply.load_jpq`, so the
result is the same as a model compressed with :func:`~urecjpq_plugin.apply.apply_jpq` (and unloads,
saves and pickles the same way). The RecBole command ``urecjpq compress`` lives in
:mod:`urecjpq_plugin.hosts.recbole.compress`; nothing here imports a host.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Mapping, Sequence

import torch
from torch import nn

from urecjpq_plugin.apply import STATE_FORMAT, JPQReport, load_jpq
from urecjpq_plugin.codes import code_dtype
from urecjpq_plugin.config import JPQConfig, URecJPQError, jpq_enabled
from urecjpq_plugin.inject import _resolve, _table_of, find_id_tables
from urecjpq_plugin.pq import ProductQuantizer, decode_rows, relative_error


class CompressError(URecJPQError):
    """The checkpoint cannot be compressed as asked (missing, already JPQ, output exists ...)."""


def check_out_free(out: str) -> None:
    """Nothing is overwritten: ``--out`` must not exist."""
    if os.path.exists(out):
        raise CompressError(f"--out {out!r} already exists; choose a new path (nothing is overwritten)")


def check_not_jpq(checkpoint: Mapping, path: str) -> None:
    """A checkpoint whose tables are already JPQ (or whose config says ``jpq: true``) is not compressed again."""
    jpq_keys = [k for k in checkpoint["state_dict"] if k.endswith(".sub_embeddings")]
    if jpq_keys or jpq_enabled(checkpoint["config"]):
        raise CompressError(
            f"checkpoint {path!r} is already JPQ-compressed ({', '.join(jpq_keys[:2]) or 'jpq: True'}); "
            "give one trained without jpq"
        )


def quantize_table(
    table: torch.Tensor, M: int, ksub: int, seed: int, padding_idx: int | None = None, iters: int = 25
) -> tuple[torch.Tensor, torch.Tensor]:
    """Product-quantise a trained ``[N, d]`` table -> ``(codes [N, M], centroids [M, ksub, d/M])``.

    The padding row (all zeros, never trained) is left out and gets sub-ids 0; its decoded row is
    zero anyway in :class:`~urecjpq_plugin.jpq.JPQEmbedding`. A split with at most ``ksub`` distinct
    sub-vectors is quantised exactly.
    """
    table = table.detach().float().cpu()
    n, d = table.shape
    JPQConfig(M=M, ksub=ksub).check_dim(d)
    keep = torch.ones(n, dtype=torch.bool)
    if padding_idx is not None:
        keep[padding_idx] = False
    rows = table[keep]
    pq = ProductQuantizer(d, M, ksub, seed=seed, iters=iters).train(rows)
    codes = torch.zeros(n, M, dtype=torch.long)
    codes[keep] = pq.encode(rows)
    return codes.to(code_dtype(ksub)), pq.centroids


def quantize_model(
    model: nn.Module,
    counts: Mapping[str, int],
    M: int | str,
    ksub: int,
    targets: Sequence[str] = ("user", "item"),
    seed: int = 0,
    iters: int = 25,
) -> tuple[JPQReport, list[str]]:
    """Replace every trained ID table of ``model`` by its product quantisation, in place.

    Tables are found as :func:`~urecjpq_plugin.apply.apply_jpq` finds them (registry or default rule,
    ``counts`` = ID count per entity). Returns the report and one line per table (reconstruction
    error ``||X - X_hat||_F / ||X||_F`` and bytes).
    """
    config = JPQConfig(M=M, ksub=ksub, targets=tuple(targets))
    refs = find_id_tables(model, counts, config.id_targets)
    config = config.for_dims(r.shape[1] for r in refs)  # M "auto": the plugin's one default, d / 4
    M = config.M
    for ref in refs:
        config.check_dim(ref.shape[1], table=ref.path)
    entries, lines = [], []
    for ref in refs:
        parent, leaf = _resolve(model, ref.path)
        table, padding_idx = _table_of(parent, leaf, ref.kind)
        codes, centroids = quantize_table(table, M, ksub, seed, padding_idx, iters)
        decoded = decode_rows(centroids, codes)
        if padding_idx is not None:
            decoded[padding_idx] = 0
        entries.append({
            "path": ref.path, "entity": ref.entity, "kind": ref.kind, "rows": ref.shape[0], "dim": ref.shape[1],
            "M": M, "ksub": ksub, "padding_idx": padding_idx, "codes": codes, "sub_embeddings": centroids,
        })
        lines.append(
            f"{ref.path} [{ref.shape[0]}x{ref.shape[1]}] -> M={M} ksub={ksub}: relative reconstruction error "
            f"{relative_error(table, decoded):.3f}, bytes {table.numel() * table.element_size():,} -> "
            f"{codes.numel() * codes.element_size() + centroids.numel() * table.element_size():,}"
        )
    report = load_jpq(model, {"format": STATE_FORMAT, "tables": entries})
    return replace(report, code_assign="kmeans"), lines

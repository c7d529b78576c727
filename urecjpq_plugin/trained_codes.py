"""Codes from a trained, uncompressed model's tables (``jpq_codes_from``).

Per split, k-means of the trained rows (:func:`~urecjpq_plugin.codes.kmeans_codes`, the product quantiser
``urecjpq compress`` uses): IDs whose trained rows agree in a split share that sub-id. On sparse data the
interaction SVD misses what training puts in the rows (MMRec on TikTok: trained user rows are close to the
mean of their items' trained rows, R² 0.83-0.88, and not to the SVD's factors, 0.07-0.08), and codes read
off the trained model close most of the compressed models' gap (TikTok, 3 seeds, recall@20 against
uncompressed: FREEDOM −7.7 % → −1.6 %, MGCN −14.8 % → −4.5 %). On dense data (ml-100k) the SVD codes do better,
and a model that stopped early gives poor codes (docs/benchmarks.md, "Fifteenth round"). The compressed model
still trains from scratch; only its codes come from the checkpoint.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

import torch

from urecjpq_plugin.checkpoint_file import read_checkpoint_file
from urecjpq_plugin.codes import kmeans_codes, log_distinct_fractions
from urecjpq_plugin.config import JPQConfig, JPQConfigError
from urecjpq_plugin.inject import TableRef

logger = logging.getLogger("urecjpq_plugin")

# (state_dict key, first row, end row, the table's rows): where an entity's rows sit in a checkpoint. A table
# of users then items (MMRec's GRCN) gives each entity its slice; several tables of one entity join by width.
RowSource = tuple[str, int, int, int]
WRITTEN_BY = "a trainer of the uncompressed model"  # how a missing or unreadable file's error names what to give


def checkpoint_state(path: str) -> Mapping[str, Any]:
    """The state dict of a host checkpoint (``{"state_dict": ...}``, RecBole's and MMRec's) or of a file
    holding a state dict itself (``torch.save(model.state_dict(), path)``). Read without running code from
    the file (see :mod:`~urecjpq_plugin.checkpoint_file`)."""
    checkpoint = read_checkpoint_file(path, written_by=WRITTEN_BY)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise JPQConfigError(f"jpq_codes_from={path!r} holds no state dict; give a checkpoint of the uncompressed "
                             "model (a host's saved .pth, or torch.save(model.state_dict()))")
    return state


def trained_rows(state: Mapping[str, Any], sources: Sequence[RowSource], entity: str, path: str) -> torch.Tensor:
    """``[rows, width]`` float32: the entity's trained rows from ``sources``, joined by width."""
    parts = []
    for key, start, end, table_rows in sources:
        tensor = state.get(key)
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 2:
            tables = ", ".join(f"{k} {list(v.shape)}" for k, v in state.items()
                               if isinstance(v, torch.Tensor) and v.ndim == 2) or "none"
            raise JPQConfigError(
                f"jpq_codes_from={path!r} has no 2-d {key!r} for the {entity} codes; it must be a checkpoint of "
                f"this model trained uncompressed (its 2-d tensors: {tables})")
        if tensor.shape[0] != table_rows:
            raise JPQConfigError(
                f"jpq_codes_from={path!r}: {key} has {tensor.shape[0]} rows, the model's table has {table_rows}; "
                "give a checkpoint of this model trained on this dataset")
        part = tensor[start:end].detach().float()
        if not torch.isfinite(part).all():
            raise JPQConfigError(f"jpq_codes_from={path!r}: {key} holds NaN or inf rows; give a checkpoint of a "
                                 "run that trained to finite values")
        parts.append(part)
    return torch.cat(parts, dim=1)


def checkpoint_row_sources(refs: Iterable[TableRef], counts: Mapping[str, int]) -> dict[str, list[RowSource]]:
    """Where each entity's rows sit in the model's state dict: ``{entity: [RowSource]}``
    (a users-then-items table, entity ``user_item``, gives users its first rows and items the rest)."""
    sources: dict[str, list[RowSource]] = {}
    for ref in refs:
        key = f"{ref.path}.weight" if ref.kind == "embedding" else ref.path
        if ref.entity == "user_item":
            both = counts["user"] + counts["item"]
            sources.setdefault("user", []).append((key, 0, counts["user"], both))
            sources.setdefault("item", []).append((key, counts["user"], both, both))
        else:
            sources.setdefault(ref.entity, []).append((key, 0, counts[ref.entity], counts[ref.entity]))
    return sources


def codes_for_tables(path: str, refs: Iterable[TableRef], counts: Mapping[str, int],
                     config: JPQConfig) -> dict[str, torch.Tensor]:
    """:func:`codes_from_checkpoint` for the tables ``refs`` (as the host or ``apply_jpq`` matched them)."""
    return codes_from_checkpoint(path, checkpoint_row_sources(refs, counts), config)


def codes_from_checkpoint(path: str, sources: Mapping[str, Sequence[RowSource]],
                          config: JPQConfig) -> dict[str, torch.Tensor]:
    """``{entity: codes [rows, M]}`` from per-split k-means of the checkpoint's trained rows.

    ``sources``: each entity's :data:`RowSource` list (its tables' state-dict keys, from the host's table
    matching); ``config``: ``M``, ``ksub`` (per table, ``jpq_table_overrides``) and the seed. Every entity is
    checked before any k-means runs.
    """
    state = checkpoint_state(path)
    rows = {entity: trained_rows(state, sources[entity], entity, path) for entity in sources}
    codes = {}
    for entity, vectors in rows.items():
        table_config = config.for_table(entity)
        if vectors.shape[1] % table_config.M:
            raise JPQConfigError(
                f"jpq_codes_from={path!r}: the {entity} rows are {vectors.shape[1]} wide, which does not split into "
                f"jpq_M={table_config.M} parts; give a checkpoint of this model (same embedding size)")
        table_config.check_rows(vectors.shape[0], table=f"the {entity} table")
        codes[entity] = kmeans_codes(vectors, table_config.M, table_config.ksub, seed=config.seed)[0]
        logger.info(f"urecjpq: {entity} codes from k-means of the trained rows of "
                    f"{', '.join(source[0] for source in sources[entity])} in {path}")
    return log_distinct_fractions(codes)

"""RecBole's context-aware models (FM, DeepFM, DCN, DSSM, FFM ...): the user/item rows of shared token tables.

These models hold every token field in one ``nn.Embedding(sum(field_dims), d)`` inside an
``FMEmbedding`` that adds per-field offsets (``ContextRecommender.token_embedding_table``), plus a
1-d one of the same rows for the first-order weights (``first_order_linear``); DSSM's two towers
read one table whose user fields come first; FFM adds one field-aware table per field
(``ffm.token_embeddings``). With ``jpq: true`` each such table becomes a
:class:`~urecjpq_plugin.row_ranges.RowRangeEmbedding`: the rows of the ``USER_ID_FIELD`` and
``ITEM_ID_FIELD`` fields are JPQ-compressed with user/item codes made the general models' way (``jpq_code_assign: auto``
means ``svd_pq`` here, measured better for all six CTR models benchmarked),
every other field's rows are kept as ordinary learned rows. The models' code is untouched.

First-order (1-d) rows of users and items (``first_order_linear``) are kept as learned rows by
default (:data:`FIRST_ORDER_ROWS`). The alternative, per-split scalars that add up
(``w(i) = sum_k b[k, g(i, k)]``, :func:`~urecjpq_plugin.row_ranges.sums_splits`), saves 1,603 more
parameters on ml-100k (M=2, ksub=256) but cost 0.5-1 AUC point more: RecBole's CTR setting, up to
100 epochs, test AUC plain / kept / summed: FM seed 2020 0.7823 / 0.7812 / 0.7761, seed 2021
0.7850 / 0.7743 / 0.7640; DeepFM seed 2020 0.7869 / 0.7886 / 0.7834.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from urecjpq_plugin.config import AUTO, JPQConfig
from urecjpq_plugin.inject import JPQTargetError, SwapRecord, count_trainable
from urecjpq_plugin.row_ranges import RowRange, RowRangeEmbedding, compressed_params, sums_splits
from urecjpq_plugin.hosts.base import codes_source, log_swaps

logger = logging.getLogger("urecjpq_plugin")

# "kept": first-order user/item rows stay learned rows; "summed": compressed as per-split scalars that
# add up (M * ksub per entity). See the module docstring for the measurement.
FIRST_ORDER_ROWS = "kept"
SEARCHED = ("FMEmbedding token tables (the model's token_embedding_table and first_order_linear's) "
            "and FFM's field-aware ffm.token_embeddings")


@dataclass(frozen=True)
class TokenTable:
    """One shared token table: where it is and which field owns which rows."""

    path: str  # dotted path of the nn.Embedding from the model root
    fields: tuple[str, ...]
    offsets: tuple[int, ...]
    dims: tuple[int, ...]
    first_order: bool  # the 1-d first-order weights (FMFirstOrderLinear)

    def range_of(self, field: str) -> tuple[int, int]:
        i = self.fields.index(field)
        return self.offsets[i], self.offsets[i] + self.dims[i]


def is_context_model(model: nn.Module) -> bool:
    try:
        from recbole.model.abstract_recommender import ContextRecommender
    except ImportError:
        return False
    return isinstance(model, ContextRecommender)


def token_tables(model: nn.Module, compressed: bool = False) -> list[TokenTable]:
    """Every shared token table of ``model`` that is still a plain ``nn.Embedding`` (and, with
    ``compressed``, those already a :class:`RowRangeEmbedding`)."""
    from recbole.model.layers import FMEmbedding, FMFirstOrderLinear

    kinds = (nn.Embedding, RowRangeEmbedding) if compressed else nn.Embedding
    found = []
    for prefix, owner in model.named_modules():
        at = f"{prefix}." if prefix else ""
        table = owner._modules.get("token_embedding_table")
        if isinstance(table, FMEmbedding) and isinstance(table.embedding, kinds):
            found.append(TokenTable(f"{at}token_embedding_table.embedding", tuple(owner.token_field_names),
                                    tuple(int(o) for o in table.offsets), tuple(int(d) for d in owner.token_field_dims),
                                    isinstance(owner, FMFirstOrderLinear)))
        field_aware = owner._modules.get("token_embeddings")  # FFM: one table per field, same rows
        if isinstance(field_aware, nn.ModuleList) and hasattr(owner, "token_feature_names"):
            for i, embedding in enumerate(field_aware):
                if isinstance(embedding, kinds):
                    found.append(TokenTable(f"{at}token_embeddings.{i}", tuple(owner.token_feature_names),
                                            tuple(int(o) for o in owner.token_offsets),
                                            tuple(int(d) for d in owner.token_feature_dims), False))
    return found


def id_fields(config: Any, targets: Sequence[str]) -> dict[str, str]:
    """``{entity: field name}`` for the targets: RecBole's ``USER_ID_FIELD`` / ``ITEM_ID_FIELD``."""
    keys = {"user": "USER_ID_FIELD", "item": "ITEM_ID_FIELD"}
    return {entity: config[keys[entity]] for entity in targets}


def plan_ranges(model: nn.Module, config: Any, counts: Mapping[str, int], targets: Sequence[str],
                first_order: str | None = None) -> list[tuple[TokenTable, list[RowRange]]]:
    """Which row ranges of which tables ``jpq: true`` compresses; refuses in one line when none.
    ``first_order``: "summed" or "kept" (default :data:`FIRST_ORDER_ROWS`)."""
    first_order = first_order or FIRST_ORDER_ROWS
    fields = id_fields(config, targets)
    plan = []
    tables = token_tables(model)
    for table in tables:
        if table.first_order and first_order == "kept":
            continue
        ranges = []
        for entity, field in fields.items():
            if field not in table.fields:
                continue
            start, stop = table.range_of(field)
            if stop - start != counts[entity]:
                raise JPQTargetError(
                    f"field {field} of {type(model).__name__}'s {table.path} has {stop - start} rows but the "
                    f"dataset has {counts[entity]} {entity} ids; the table and the dataset disagree"
                )
            ranges.append(RowRange(field, entity, start, stop))
        if ranges:
            plan.append((table, ranges))
    if not plan:
        present = sorted({f for t in tables for f in t.fields}) or ["none"]
        raise JPQTargetError(
            f"model {type(model).__name__} has no token table holding fields {sorted(fields.values())} for "
            f"jpq_targets={list(targets)}: searched {SEARCHED}; {len(tables)} found, their token fields: "
            f"{', '.join(present)}"
        )
    return plan


def resolved_config(jcfg: JPQConfig, plan: Sequence[tuple[TokenTable, list[RowRange]]], model: nn.Module) -> JPQConfig:
    """``jpq_M: auto`` from the embedding tables' width (the 1-d first-order ones sum splits), then checks."""
    widths = {t.path: model.get_submodule(t.path).embedding_dim for t, _ in plan}
    wide = [widths[t.path] for t, _ in plan if not t.first_order]
    jcfg = jcfg.for_dims(wide or widths.values())
    for table, ranges in plan:
        for r in ranges:
            if not table.first_order:
                jcfg.for_table(r.entity).check_dim(widths[table.path], table=table.path)
            jcfg.for_table(r.entity).check_rows(r.rows, table=f"{table.path} field {r.field}")
    return jcfg


def compress_context_model(model: nn.Module, config: Any, dataset: Any, jcfg: JPQConfig,
                           compute_codes: Callable[[JPQConfig, Any], Mapping[str, Any]],
                           row_scales: Callable[[], Mapping[str, Any]] | None = None) -> list[SwapRecord]:
    """Replace each shared token table holding user/item rows by a RowRangeEmbedding; checks first.
    ``compute_codes(jcfg, dataset)``: the host's user/item codes (the general models' own);
    ``row_scales()``: per-entity degree scales, as the general models get them (inject_jpq)."""
    counts = {"user": dataset.user_num, "item": dataset.item_num}
    plan = plan_ranges(model, config, counts, jcfg.id_targets)
    jcfg = resolved_config(jcfg, plan, model)
    # svd_pq beat svd on all six CTR models measured (docs/benchmarks.md)
    if jcfg.code_assign == AUTO and jcfg.codes_from is None:
        logger.info("urecjpq: jpq_code_assign=auto -> svd_pq (context-aware model)")
        jcfg = replace(jcfg, code_assign="svd_pq")
    codes_for = codes_source(jcfg, counts, lambda: compute_codes(jcfg, dataset))
    codes = {entity: codes_for(entity) for entity in dict.fromkeys(r.entity for _, rs in plan for r in rs)}
    scales = dict(row_scales()) if row_scales is not None else {}
    before = count_trainable(model)
    built, records = [], []
    for table, ranges in plan:  # every new table first: a failing check changes nothing
        plain = model.get_submodule(table.path)
        per_entity = {e: jcfg.for_table(e) for e in codes}
        new = RowRangeEmbedding.from_table(plain, ranges, codes, {e: c.M for e, c in per_entity.items()},
                                           {e: c.ksub for e, c in per_entity.items()}, jcfg.split_dropout)
        for r, part in zip(new.ranges, new.parts):
            part.set_row_scale(scales.get(r.entity))
            if jcfg.unit_rows is True:
                part.set_unit_rows()
        built.append((table.path, new))
        records += _records(table.path, plain, new)
    for path, new in built:
        parent_path, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent_path), leaf, new)
    log_swaps(records, jcfg, before, count_trainable(model))
    model._urecjpq_records = records
    return records


def _records(path: str, plain: nn.Embedding, new: RowRangeEmbedding) -> list[SwapRecord]:
    trainable = plain.weight.requires_grad
    width, size = plain.embedding_dim, plain.weight.element_size()
    return [
        SwapRecord(f"{path}[{r.start}:{r.stop}]", r.entity, r.rows, width,
                   r.rows * width if trainable else 0, part.trainable_count() if trainable else 0,
                   r.rows * width * size, part.compact_bytes())
        for r, part in zip(new.ranges, new.parts)
    ]


def plan_lines(model: nn.Module, config: Any, counts: Mapping[str, int], jcfg: JPQConfig) -> list[str]:
    """``urecjpq tables`` for a context-aware model: every field's rows of every shared token table,
    compressed or kept, then the trainable parameters of the user/item rows and of the whole model."""
    plan = plan_ranges(model, config, counts, jcfg.id_targets)
    jcfg = resolved_config(jcfg, plan, model)
    compressed = {(t.path, r.field): r for t, ranges in plan for r in ranges}
    id_field_names = set(id_fields(config, ("user", "item")).values())
    lines = [f"{'table':<50} {'rows':>11} {'dim':>4}  {'field':<14} {'entity':<6} rows are"]
    saved = id_rows_before = 0
    for table in token_tables(model):
        plain = model.get_submodule(table.path)
        width, trainable = plain.embedding_dim, plain.weight.requires_grad
        for field in table.fields:
            start, stop = table.range_of(field)
            r = compressed.get((table.path, field))
            if field in id_field_names and trainable:
                id_rows_before += (stop - start) * width
            if r is None:
                how, entity = "kept", "-"
            else:
                table_config = jcfg.for_table(r.entity)
                after = compressed_params(width, table_config.M, table_config.ksub)
                splits = "summed" if sums_splits(width, table_config.M) else "concatenated"
                how = f"compressed ({splits} splits, M={table_config.M} ksub={table_config.ksub}, {after:,} params)"
                entity = r.entity
                saved += (r.rows * width - after) if trainable else 0
            lines.append(f"{table.path:<50} {f'{start}:{stop}':>11} {width:>4}  {field:<14} {entity:<6} {how}")
    before = count_trainable(model)
    id_rows_after = id_rows_before - saved
    lines.append(f"user/item rows: trainable parameters {id_rows_before:,} -> {id_rows_after:,} "
                 f"({id_rows_after / max(id_rows_before, 1):.2%})")
    lines.append(f"M={jcfg.M} ksub={jcfg.ksub}: trainable parameters {before:,} -> {before - saved:,} "
                 f"({(before - saved) / max(before, 1):.2%})")
    return lines


def id_row_params(model: nn.Module, config: Any) -> int:
    """Trainable parameters holding user/item rows in the shared token tables, compressed or not
    (the bench's "ID-table params" of a context-aware model)."""
    fields = set(id_fields(config, ("user", "item")).values())
    total = 0
    for table in token_tables(model, compressed=True):
        module = model.get_submodule(table.path)
        parts = dict(zip((r.field for r in module.ranges), module.parts)) if isinstance(module, RowRangeEmbedding) else {}
        for field in fields & set(table.fields):
            if field in parts:
                sub = parts[field].sub_embeddings
                total += sub.numel() if sub.requires_grad else 0
            elif (module.kept_weight if isinstance(module, RowRangeEmbedding) else module.weight).requires_grad:
                start, stop = table.range_of(field)
                total += (stop - start) * module.embedding_dim
    return total

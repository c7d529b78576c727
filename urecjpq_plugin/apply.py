"""Apply, save, load and undo JPQ on any PyTorch model (no host framework), the PEFT way::

    report = apply_jpq(model, JPQConfig(M=8, ksub=256), counts={"user": n_users, "item": n_items},
                       interactions=train_matrix)   # or codes={...}, or JPQConfig(code_assign="random")
    print(report)                                   # trainable parameters before -> after, per table
    torch.save(jpq_state_dict(model), path)         # codes + sub-embeddings + a small config
    load_jpq(plain_model, torch.load(path, weights_only=True))  # rebuilt from the saved codes
    unload_jpq(model)                               # plain nn.Embedding / nn.Parameter tables again

Tables are found through the registry (:func:`~urecjpq_plugin.inject.register_id_tables`) or the
default rule (:func:`~urecjpq_plugin.inject.match_id_tables`); every target is checked before
anything changes.
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from urecjpq_plugin.assign import assign_codes, degree_scales, resolve_unit_rows
from urecjpq_plugin.codes import as_codes
from urecjpq_plugin.config import ID_TARGETS, JPQConfig, JPQConfigError, URecJPQError
from urecjpq_plugin.inject import (
    JPQTargetError,
    SwapRecord,
    TableRef,
    _resolve,
    _table_of,
    count_trainable,
    find_id_tables,
    inject_jpq,
    jpq_module_at,
    jpq_modules,
    list_candidate_tables,
    swap_all,
    swapped_tables,
    unswap_table,
)
from urecjpq_plugin.jpq import JPQEmbedding
from urecjpq_plugin.trained_codes import codes_for_tables

STATE_FORMAT = "urecjpq/jpq-state/1"
_ENTRY_KEYS = ("path", "entity", "kind", "rows", "dim", "M", "ksub", "padding_idx", "codes", "sub_embeddings")


class JPQCheckpointError(URecJPQError):
    """A checkpoint and the model being loaded disagree (tables, shapes, compressed or not)."""


_BUILDING_FOR_LOAD: ContextVar[bool] = ContextVar("urecjpq_building_for_load", default=False)


@contextmanager
def building_for_load() -> Iterator[None]:
    """Models built inside get JPQ tables with placeholder (zero) codes: no SVD, no k-means.

    For a model that a checkpoint will fill: the host builds the compressed structure, then the
    state load brings the real codes and sub-embeddings (hosts ask :func:`is_building_for_load`).
    """
    token = _BUILDING_FOR_LOAD.set(True)
    try:
        yield
    finally:
        _BUILDING_FOR_LOAD.reset(token)


def is_building_for_load() -> bool:
    return _BUILDING_FOR_LOAD.get()


@dataclass(frozen=True)
class JPQReport:
    """What :func:`apply_jpq` / :func:`load_jpq` did; ``print(report)`` shows it, PEFT style."""

    tables: tuple[SwapRecord, ...]
    M: int
    ksub: int
    code_assign: str  # svd, random, given (codes=...), codes_from (a trained checkpoint) or checkpoint
    trainable_before: int
    trainable_after: int
    all_params: int  # every parameter after the swap, trainable or not

    def __str__(self) -> str:
        share = self.trainable_after / max(self.trainable_before, 1)
        lines = [
            f"JPQ M={self.M} ksub={self.ksub} codes={self.code_assign}: trainable params "
            f"{self.trainable_before:,} -> {self.trainable_after:,} ({share:.2%}) || all params: {self.all_params:,}"
        ]
        for r in self.tables:
            lines.append(
                f"  {r.path} [{r.rows}x{r.dim}] ({r.entity}): trainable params {r.params_before:,} -> "
                f"{r.params_after:,}, bytes {r.bytes_before:,} -> {r.bytes_after:,}"
            )
        return "\n".join(lines)


def _report(model: nn.Module, records: list[SwapRecord], M: int, ksub: int, how: str, before: int) -> JPQReport:
    all_params = sum(p.numel() for p in model.parameters())
    return JPQReport(tuple(records), M, ksub, how, before, count_trainable(model), all_params)


def _refuse_compressed(model: nn.Module) -> None:
    present = sorted(swapped_tables(model)) or sorted(jpq_modules(model))
    if present:
        raise JPQTargetError(
            f"model {type(model).__name__} already holds JPQ tables ({', '.join(present)}); call unload_jpq(model) first"
        )


def _checked_counts(counts: Mapping[str, int], entities: tuple[str, ...]) -> dict[str, int]:
    bad = [e for e in entities if isinstance(counts.get(e), bool) or not isinstance(counts.get(e), int) or counts[e] < 1]
    if bad:
        raise JPQConfigError(
            f"counts={dict(counts)!r} lacks a positive integer ID count for {bad}; give e.g. counts={{'user': 943, 'item': 1682}}"
        )
    return {e: counts[e] for e in entities}


def _given_codes(codes: Mapping[str, Any], counts: Mapping[str, int], entities: list[str], config: JPQConfig) -> dict:
    missing = [e for e in entities if e not in codes]
    if missing:
        raise JPQConfigError(f"codes has no entry for {missing}; give codes={{entity: [rows, M] tensor}} for {entities}")
    out = {}
    for entity in entities:
        try:
            out[entity] = as_codes(codes[entity], config.for_table(entity).ksub)
        except JPQConfigError as err:
            raise JPQConfigError(f"codes[{entity!r}]: {err}") from None
    for entity, value in out.items():
        M = config.for_table(entity).M
        if tuple(value.shape) != (counts[entity], M):
            raise JPQConfigError(
                f"codes[{entity!r}] has shape {tuple(value.shape)}; {entity} needs {(counts[entity], M)} (rows, M)"
            )
    return out


def _assigned_codes(config: JPQConfig, counts: Mapping[str, int], entities: list[str], interactions: Any) -> dict:
    if config.code_assign == "random":
        by_entity = assign_codes(config, counts={e: counts[e] for e in entities})
        return {e: by_entity[e] for e in entities}
    if config.code_assign.startswith("features"):
        raise JPQConfigError(
            f"jpq_code_assign={config.code_assign!r} needs item features, which apply_jpq does not take; pass "
            "codes= (e.g. from urecjpq_plugin.features.feature_id_codes) or use svd or random"
        )
    if interactions is None:
        raise JPQConfigError(
            f"jpq_code_assign={config.code_assign!r} needs interactions= (a scipy users x items training matrix); "
            "pass codes= or use JPQConfig(code_assign='random')"
        )
    shape = tuple(getattr(interactions, "shape", ()))
    expected = tuple(counts.get(e) for e in ID_TARGETS)
    if len(shape) != 2 or any(n is not None and n != got for n, got in zip(expected, shape)):
        raise JPQConfigError(f"interactions has shape {shape}; counts say (users, items) = {expected}")
    by_entity = assign_codes(config, interactions)
    return {e: by_entity[e] for e in entities}


def _as_config(config: Any) -> JPQConfig:
    """A :class:`JPQConfig`, or a mapping of its field names (``{"M": 8, "ksub": 256}``) made into one."""
    if isinstance(config, JPQConfig):
        return config
    if isinstance(config, Mapping):
        fields = set(JPQConfig.__dataclass_fields__) - {"dim"}
        unknown = sorted(set(map(str, config)) - fields)
        if unknown:
            raise JPQConfigError(f"config has unknown keys {unknown}; JPQConfig takes {sorted(fields)}")
        return JPQConfig(**config)
    raise JPQConfigError(f"config is a {type(config).__name__}; give a JPQConfig or a dict of its fields")


def _checked_tables(tables: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(tables, Mapping) or not all(
        isinstance(e, str) and not isinstance(p, str) and all(isinstance(x, str) for x in p) for e, p in tables.items()
    ):
        raise JPQConfigError(
            f"tables={tables!r} is invalid; give {{entity: [attribute paths]}}, e.g. {{'user': ['user_embedding'], "
            f"'item': ['item_embedding']}} (entities: {', '.join(ID_TARGETS)})"
        )
    unknown = sorted(set(tables) - set(ID_TARGETS))
    if unknown:
        raise JPQConfigError(f"tables names entities {unknown}; valid: {', '.join(ID_TARGETS)}")
    return {entity: tuple(paths) for entity, paths in tables.items()}


def apply_jpq(
    model: nn.Module,
    config: JPQConfig | Mapping[str, Any],
    counts: Mapping[str, int],
    codes: Mapping[str, Any] | None = None,
    interactions: Any = None,
    tables: Mapping[str, Any] | None = None,
) -> JPQReport:
    """Swap ``model``'s user/item ID tables for :class:`JPQEmbedding` tables, in place.

    ``tables``: the tables to swap, by entity (``{"user": ["user_embedding"], "item": [...]}``, dotted
    attribute paths); without it the registry (:func:`~urecjpq_plugin.inject.register_id_tables`), then
    the default rule (tables named like user/item whose rows match ``counts``).
    ``counts``: ID count per entity (``{"user": n_users, "item": n_items}``); ``codes``: optional
    ``{entity: [rows, M]}`` codes to use as given; otherwise ``config.code_assign`` decides: ``svd``
    from ``interactions`` (a scipy users x items training matrix) or ``random``. Every check (tables,
    sizes, codes) runs before the model changes.
    """
    config = _as_config(config)
    if config.feature_targets:
        raise JPQConfigError(
            f"jpq_targets {list(config.feature_targets)} are feature tables; apply_jpq compresses ID tables "
            f"(valid: {', '.join(ID_TARGETS)}); see urecjpq_plugin.features.pq_feature_table"
        )
    _refuse_compressed(model)
    counts = _checked_counts(counts, config.id_targets)
    if tables is not None:
        tables = _checked_tables(tables)
    refs = find_id_tables(model, counts, config.id_targets, tables, "apply_jpq(tables=...)")
    unmatched = [e for e in counts if e not in {r.entity for r in refs}]
    if unmatched:
        rows = sorted({shape[0] for _, _, shape in list_candidate_tables(model)})
        raise JPQTargetError(
            f"counts {', '.join(f'{e}={counts[e]}' for e in unmatched)} match no table of model "
            f"{type(model).__name__} (its tables' row counts: {rows}); give the tables' row counts"
        )
    config = config.for_dims(r.shape[1] for r in refs)  # jpq_M: auto -> M from the tables' width
    config = replace(config, unit_rows=resolve_unit_rows(config, interactions))
    entities = list(dict.fromkeys(r.entity for r in refs))
    if codes is not None and config.codes_from is not None:
        raise JPQConfigError(f"codes= and codes_from={config.codes_from!r} both give the codes; pass one of them")
    if codes is not None:
        by_entity, how = functools.cache(lambda: _given_codes(codes, counts, entities, config)), "given"
    elif config.codes_from is not None:
        by_entity = functools.cache(lambda: codes_for_tables(config.codes_from, refs, counts, config))
        how = "codes_from"
    else:
        by_entity, how = functools.cache(lambda: _assigned_codes(config, counts, entities, interactions)), config.code_assign
    before = count_trainable(model)
    # inject_jpq checks every table (width, rows, options) before it asks for the first entity's codes
    records = inject_jpq(model, refs, lambda entity: by_entity()[entity], config, lambda: degree_scales(config, interactions))
    return _report(model, records, config.M, config.ksub, how, before)


def unload_jpq(model: nn.Module) -> nn.Module:
    """Decode every JPQ table back to a plain ``nn.Embedding`` / ``nn.Parameter`` (padding_idx, options and
    trainability kept) and give swapped modules their original classes; returns ``model``.

    Outputs are unchanged: the plain tables hold exactly the decoded rows.
    """
    swapped = swapped_tables(model)
    if not swapped:
        strays = sorted(jpq_modules(model))
        where = f"its JPQ tables {strays} were not put there by apply_jpq" if strays else "it holds no JPQ tables"
        raise JPQTargetError(f"cannot unload model {type(model).__name__}: {where}")
    for path in reversed(list(swapped)):  # undo in reverse, so each owner's parameter order comes back
        unswap_table(model, path)
    return model


def jpq_state_dict(model: nn.Module) -> dict:
    """Only what JPQ adds: per table its codes, sub-embeddings and a small config (plain types, so
    ``torch.load(path, weights_only=True)`` reads it). The rest of the model is the host's business."""
    swapped = swapped_tables(model)
    if not swapped:
        raise JPQTargetError(f"model {type(model).__name__} holds no JPQ tables; call apply_jpq(model, ...) first")
    tables = []
    for path, record in swapped.items():
        module = jpq_module_at(model, record.ref)
        tables.append({
            "path": path, "entity": record.ref.entity, "kind": record.ref.kind,
            "rows": module.num_embeddings, "dim": module.embedding_dim, "M": module.M, "ksub": module.ksub,
            "padding_idx": module.padding_idx, "split_dropout": module.split_dropout,
            "codes": module.codes.detach(), "sub_embeddings": module.sub_embeddings.detach(),
            **({} if module.row_scale is None else {"row_scale": module.row_scale.detach()}),
            **({} if module.row_log_length is None else {"row_log_length": module.row_log_length.detach()}),
        })
    return {"format": STATE_FORMAT, "tables": tables}


def _load_row_extras(module: JPQEmbedding, entry: Mapping, path: str) -> None:
    """The entry's optional per-ID row scale and unit-row length (both absent: neither)."""
    try:
        module.set_row_scale(entry.get("row_scale"))
        log_length = entry.get("row_log_length")
        trainable = module.sub_embeddings.requires_grad
        module.set_unit_rows(None if log_length is None else math.exp(float(log_length)))
        if module.row_log_length is not None:
            module.row_log_length.requires_grad_(trainable)
    except (JPQConfigError, TypeError, ValueError, OverflowError) as err:
        raise JPQCheckpointError(f"checkpoint table {path!r}: {err}") from None


def _entries(state: Any) -> list[dict]:
    tables = state.get("tables") if isinstance(state, Mapping) else None
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT or not isinstance(tables, list) or not tables:
        keys = sorted(map(str, state))[:6] if isinstance(state, Mapping) else type(state).__name__
        raise JPQCheckpointError(f"state is not a jpq_state_dict (format {STATE_FORMAT!r} with tables); got {keys}")
    for entry in state["tables"]:
        if not isinstance(entry, Mapping) or set(_ENTRY_KEYS) - set(entry):
            raise JPQCheckpointError(f"jpq state table entry lacks keys; each needs {', '.join(_ENTRY_KEYS)}")
    return list(state["tables"])


def _checked_entry(entry: Mapping[str, Any], have: tuple[str, tuple[int, ...], int | None], model: str) -> torch.Tensor:
    """Check one checkpoint table against the model's (kind, shape, padding_idx); return its codes."""
    path, rows, dim, M, ksub = entry["path"], entry["rows"], entry["dim"], entry["M"], entry["ksub"]
    kind, shape, padding_idx = have
    if (entry["kind"], (rows, dim), entry["padding_idx"]) != (kind, tuple(shape), padding_idx):
        raise JPQCheckpointError(
            f"checkpoint table {path!r} is a {entry['kind']} [{rows}x{dim}] padding_idx={entry['padding_idx']}; "
            f"model {model} has a {kind} {list(shape)} padding_idx={padding_idx} there"
        )
    try:
        JPQConfig(M=M, ksub=ksub).check_dim(dim, table=path)
        codes = as_codes(entry["codes"], ksub)
    except JPQConfigError as err:
        raise JPQCheckpointError(f"checkpoint table {path!r}: {err}") from None
    if tuple(codes.shape) != (rows, M) or tuple(entry["sub_embeddings"].shape) != (M, ksub, dim // M):
        raise JPQCheckpointError(
            f"checkpoint table {path!r} has codes {list(codes.shape)} and sub_embeddings "
            f"{list(entry['sub_embeddings'].shape)}; M={M} ksub={ksub} need {[rows, M]} and {[M, ksub, dim // M]}"
        )
    return codes


def load_jpq(model: nn.Module, state: Mapping[str, Any]) -> JPQReport:
    """Load a :func:`jpq_state_dict` into ``model``: a plain model gets its JPQ tables rebuilt from the
    checkpoint's codes (never recomputed); a compressed one gets codes and sub-embeddings copied in.
    Every table is checked first; a mismatch raises :class:`JPQCheckpointError` and changes nothing."""
    entries = _entries(state)
    name = type(model).__name__
    swapped = swapped_tables(model)
    plain = {path: (kind, shape) for path, kind, shape in list_candidate_tables(model)}
    extra = sorted(set(swapped) - {e["path"] for e in entries})
    if extra:
        raise JPQCheckpointError(f"model {name} holds JPQ tables {extra} that the checkpoint lacks")
    checked = []
    for entry in entries:
        path = entry["path"]
        if path in swapped:
            module = jpq_module_at(model, swapped[path].ref)
            have = (swapped[path].ref.kind, (module.num_embeddings, module.embedding_dim), module.padding_idx)
            if (module.M, module.ksub) != (entry["M"], entry["ksub"]):
                raise JPQCheckpointError(
                    f"checkpoint table {path!r} has M={entry['M']} ksub={entry['ksub']}; model {name} has "
                    f"M={module.M} ksub={module.ksub}"
                )
        elif path in plain:
            kind, shape = plain[path]
            parent, leaf = _resolve(model, path)
            have = (kind, shape, _table_of(parent, leaf, kind)[1])
        else:
            raise JPQCheckpointError(
                f"checkpoint table {path!r} is not in model {name}; its 2-D tables: {sorted(plain) or 'none'}"
            )
        checked.append((entry, _checked_entry(entry, have, name)))
    before = count_trainable(model)
    built = []  # new tables are all built before any swap, so a failing constructor check changes nothing
    for entry, codes in checked:
        path = entry["path"]
        if path in swapped:
            continue
        ref = TableRef(path, str(entry["entity"]), entry["kind"], (entry["rows"], entry["dim"]))
        parent, leaf = _resolve(model, path)
        table, padding_idx = _table_of(parent, leaf, ref.kind)
        try:
            new = JPQEmbedding(codes, entry["ksub"], entry["dim"], padding_idx, float(entry.get("split_dropout", 0.0)))
        except JPQConfigError as err:
            raise JPQCheckpointError(f"checkpoint table {path!r}: {err}") from None
        new = new.to(device=table.device, dtype=table.dtype)
        with torch.no_grad():
            new.sub_embeddings.copy_(entry["sub_embeddings"])
        _load_row_extras(new, entry, path)
        new.sub_embeddings.requires_grad_(table.requires_grad)
        built.append((ref, new, SwapRecord.of(ref, ref.entity, table, new)))
    for entry, codes in checked:
        if entry["path"] in swapped:
            module = jpq_module_at(model, swapped[entry["path"]].ref)
            with torch.no_grad():
                module.codes.copy_(codes)
                module.sub_embeddings.copy_(entry["sub_embeddings"])
            _load_row_extras(module, entry, entry["path"])
            module.split_dropout = float(entry.get("split_dropout", module.split_dropout))
    records = swap_all(model, built)
    return _report(model, records, entries[0]["M"], entries[0]["ksub"], "checkpoint", before)

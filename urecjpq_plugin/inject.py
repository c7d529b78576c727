"""Find a model's ID tables and swap them for :class:`JPQEmbedding`, host-agnostic.

Three table patterns are handled in place:

- ``nn.Embedding`` modules (read via ``forward(ids)`` or ``.weight``) -> replaced by the module;
- raw 2-D ``nn.Parameter`` attributes and ``ParameterDict`` entries -> the Parameter is removed,
  the ``JPQEmbedding`` is registered beside it as ``<name>_jpq`` and the old name becomes a
  read-only property returning the decoded table (the owning module's class is swapped for a
  one-property subclass, as ``torch.nn.utils.parametrize`` does).

Which attributes are ID tables: a registry (:func:`register_id_tables`) or the default rule
(:func:`match_id_tables`, a pure function). All targets are validated before anything changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from urecjpq_plugin.config import JPQConfig, JPQConfigError, URecJPQError
from urecjpq_plugin.jpq import JPQEmbedding


class JPQTargetError(URecJPQError):
    """The model has no table matching the requested targets, or a registered table is wrong."""


@dataclass(frozen=True)
class TableRef:
    path: str  # dotted path from the model root; ParameterDict keys are the last part
    entity: str  # which ID space indexes the rows: "user", "item", ...
    kind: str  # "embedding" (nn.Embedding module) or "parameter" (2-D Parameter)
    shape: tuple[int, int]


_REGISTRY: dict[str, dict[str, tuple[str, ...]]] = {}
_NAME_HINT = re.compile(r"(user|item|^u_|^i_|_u_|_i_)", re.IGNORECASE)


def register_id_tables(model: type | str, **paths_by_entity: Iterable[str]) -> None:
    """Declare a model's ID tables, e.g. ``register_id_tables("NNCF", user=["user_embedding"], item=[...])``.

    ``model`` is a class, its ``__name__`` or ``module.QualName``; paths are dotted attribute paths.
    """
    key = model if isinstance(model, str) else f"{model.__module__}.{model.__qualname__}"
    _REGISTRY[key] = {entity: tuple(paths) for entity, paths in paths_by_entity.items()}


def registered_tables(model: nn.Module) -> dict[str, tuple[str, ...]] | None:
    for cls in type(model).__mro__:
        for key in (f"{cls.__module__}.{cls.__qualname__}", cls.__name__):
            if key in _REGISTRY:
                return _REGISTRY[key]
    return None


def list_candidate_tables(model: nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
    """Every ``(path, kind, shape)`` that could be a table: Embedding modules and 2-D Parameters."""
    found = []
    embedding_params = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            found.append((name, "embedding", tuple(module.weight.shape)))
            embedding_params.add(f"{name}.weight")
    for name, param in model.named_parameters():
        if param.ndim == 2 and name not in embedding_params:
            found.append((name, "parameter", tuple(param.shape)))
    return found


def match_id_tables(
    candidates: Iterable[tuple[str, str, tuple[int, ...]]],
    counts: Mapping[str, int],
    targets: Iterable[str],
    registered: Mapping[str, Iterable[str]] | None = None,
) -> list[TableRef]:
    """Pure rule: which candidates are ID tables of ``targets``.

    With ``registered`` paths, exactly those (and each must exist with the right row count).
    Otherwise the default rule: the leaf name mentions user/item (``user_embedding``,
    ``item_emb``, ``u_embedding`` ...), and the row count equals one entity's ID count; rows decide
    the entity (NNCF's ``user_neigh_embedding`` is indexed by items), the name only breaks ties.
    """
    targets = tuple(targets)
    by_path = {path: (kind, shape) for path, kind, shape in candidates}
    refs = []
    if registered is not None:
        for entity, paths in registered.items():
            if entity not in targets:
                continue
            for path in paths:
                if path not in by_path:
                    raise JPQTargetError(
                        f"declared {entity} table {path!r} does not exist; tables present: {sorted(by_path)}"
                    )
                kind, shape = by_path[path]
                if entity in counts and shape[0] != counts[entity]:
                    raise JPQTargetError(
                        f"declared {entity} table {path!r} has {shape[0]} rows, expected {counts[entity]}"
                    )
                refs.append(TableRef(path, entity, kind, (shape[0], shape[1])))
        return refs
    for path, (kind, shape) in by_path.items():
        leaf = path.rsplit(".", 1)[-1]
        if len(shape) != 2 or not _NAME_HINT.search(leaf):
            continue
        entities = [e for e in targets if counts.get(e) == shape[0]]
        if len(entities) > 1:  # equal ID counts: the name decides
            entities = [e for e in entities if e in leaf.lower()] or entities[:1]
        if entities:
            refs.append(TableRef(path, entities[0], kind, (shape[0], shape[1])))
    return refs


def find_id_tables(
    model: nn.Module,
    counts: Mapping[str, int],
    targets: Iterable[str],
    declared: Mapping[str, Iterable[str]] | None = None,
    declared_by: str = "registered",
) -> list[TableRef]:
    """Resolve the ID tables of ``model``; raise :class:`JPQTargetError` naming what was searched.

    ``declared``: table paths by entity from elsewhere (a host's YAML or table specs; ``declared_by``
    names where); without it the registry, then the default rule.
    """
    targets = tuple(targets)
    candidates = list_candidate_tables(model)
    if declared is None:
        declared = registered_tables(model)
    refs = match_id_tables(candidates, counts, targets, declared)
    if not refs:
        searched = (
            f"{declared_by} tables {dict(declared)}"
            if declared is not None
            else "nn.Embedding modules and 2-D Parameters named like user/item (user_embedding, item_emb, "
            f"u_embedding ...) with rows = {dict((t, counts.get(t)) for t in targets)}"
        )
        present = [f"{p} {list(s)}" for p, _, s in candidates] or ["none"]
        raise JPQTargetError(
            f"model {type(model).__name__} has no ID table for jpq_targets={list(targets)}: searched {searched}; "
            f"2-D tables present: {', '.join(present)}; declare yours with "
            f"urecjpq_plugin.register_id_tables({type(model).__name__!r}, user=[...], item=[...]) "
            "or the YAML key jpq_tables: {user: [...], item: [...]}"
        )
    return refs


def _resolve(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, leaf = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), leaf


def _table_of(parent: nn.Module, leaf: str, kind: str) -> tuple[torch.Tensor, int | None]:
    if kind == "embedding":
        module = getattr(parent, leaf)
        return module.weight, module.padding_idx
    return parent._parameters[leaf], None


def _swapped_class(base: type, leaves: Iterable[str] = ()) -> type:
    """A private subclass of ``base`` (one per instance) whose ``leaves`` read the decoded JPQ tables.

    Like ``torch.nn.utils.parametrize``: the base is captured in closures (never
    ``super(type(self), self)``, which recurses once the class is subclassed again), and
    ``__reduce_ex__`` rebuilds the subclass from the importable ``base``, so pickle and deepcopy work.
    """

    def __setattr__(self: nn.Module, name: str, value: object) -> None:
        if name in cls._urecjpq_tables:
            raise AttributeError(f"{name} is a JPQ-compressed table (see {name}_jpq) and cannot be reassigned")
        base.__setattr__(self, name, value)

    def __reduce_ex__(self: nn.Module, protocol: int) -> object:
        if type(self) is not cls:  # subclassed again by someone else: their class, their pickling
            return base.__reduce_ex__(self, protocol)
        return _new_swapped, (base, tuple(sorted(cls._urecjpq_tables))), self.__getstate__()

    namespace = {"__module__": base.__module__, "__qualname__": base.__qualname__, "__doc__": base.__doc__}
    cls = type(
        base.__name__,
        (base,),
        {**namespace, "_urecjpq_tables": set(), "_urecjpq_base": base, "__setattr__": __setattr__,
         "__reduce_ex__": __reduce_ex__},
    )
    for leaf in leaves:
        _add_property(cls, leaf)
    return cls


def _new_swapped(base: type, leaves: tuple[str, ...]) -> nn.Module:
    """Unpickling: an empty instance of a fresh private subclass; pickle then restores its state."""
    cls = _swapped_class(base, leaves)
    return cls.__new__(cls)


def _add_property(cls: type, leaf: str) -> None:
    def decoded(self: nn.Module, _leaf: str = leaf) -> torch.Tensor:
        return getattr(self, f"{_leaf}_jpq").weight

    cls._urecjpq_tables.add(leaf)
    setattr(cls, leaf, property(decoded))


def _install_property(parent: nn.Module, leaf: str) -> None:
    """Make ``parent.<leaf>`` return ``parent.<leaf>_jpq.weight`` (decoded, differentiable)."""
    if "_urecjpq_tables" not in type(parent).__dict__:
        parent.__class__ = _swapped_class(type(parent))
    _add_property(type(parent), leaf)


def _remove_property(parent: nn.Module, leaf: str) -> None:
    """Undo :func:`_install_property`; the instance gets its original class back with its last table."""
    owner = next(c for c in type(parent).__mro__ if leaf in c.__dict__.get("_urecjpq_tables", ()))
    owner._urecjpq_tables.discard(leaf)
    delattr(owner, leaf)
    if not owner._urecjpq_tables and type(parent) is owner:
        parent.__class__ = owner._urecjpq_base


@dataclass(frozen=True)
class SwappedTable:
    """What :func:`swap_table` replaced, kept on the root model so the swap can be undone and saved."""

    ref: TableRef
    options: tuple[tuple[str, object], ...] = ()  # nn.Embedding options besides the weight (sparse, max_norm ...)
    order: tuple[str, ...] = ()  # a raw Parameter's owner's parameter names in their original order


_SWAPS = "_urecjpq_swaps"  # root model attribute: {path: SwappedTable}
_EMBEDDING_OPTIONS = ("max_norm", "norm_type", "scale_grad_by_freq", "sparse")


def swapped_tables(model: nn.Module) -> dict[str, SwappedTable]:
    """The tables swapped in ``model`` by :func:`swap_table`, by path (empty for a plain model)."""
    return dict(model.__dict__.get(_SWAPS, {}))


def jpq_module_at(model: nn.Module, ref: TableRef) -> JPQEmbedding:
    parent, leaf = _resolve(model, ref.path)
    return getattr(parent, leaf if ref.kind == "embedding" else f"{leaf}_jpq")


def swap_table(model: nn.Module, ref: TableRef, new: nn.Module) -> None:
    """Put ``new`` (usually a :class:`JPQEmbedding`) where the table ``ref`` was; remembered on ``model``."""
    parent, leaf = _resolve(model, ref.path)
    if ref.kind == "embedding":
        old = getattr(parent, leaf)
        record = SwappedTable(ref, options=tuple((k, getattr(old, k)) for k in _EMBEDDING_OPTIONS))
        setattr(parent, leaf, new)
    else:
        record = SwappedTable(ref, order=tuple(parent._parameters))
        del parent._parameters[leaf]
        parent.add_module(f"{leaf}_jpq", new)
        _install_property(parent, leaf)
    model.__dict__.setdefault(_SWAPS, {})[ref.path] = record


def unswap_table(model: nn.Module, path: str) -> None:
    """Put a plain table holding the decoded values back where :func:`swap_table` put a JPQ one."""
    record = model.__dict__[_SWAPS].pop(path)
    ref = record.ref
    parent, leaf = _resolve(model, path)
    module = jpq_module_at(model, ref)
    with torch.no_grad():
        weight = module.weight.detach().clone()
    trainable = module.sub_embeddings.requires_grad
    if ref.kind == "embedding":
        table = nn.Embedding.from_pretrained(
            weight, freeze=not trainable, padding_idx=module.padding_idx, **dict(record.options)
        )
        setattr(parent, leaf, table)
    else:
        del parent._modules[f"{leaf}_jpq"]
        _remove_property(parent, leaf)
        parent.register_parameter(leaf, nn.Parameter(weight, requires_grad=trainable))
        rank = {name: i for i, name in enumerate(record.order)}
        ordered = sorted(parent._parameters.items(), key=lambda kv: rank.get(kv[0], len(rank)))
        parent._parameters.clear()
        parent._parameters.update(ordered)
    if not model.__dict__[_SWAPS]:
        del model.__dict__[_SWAPS]


@dataclass(frozen=True)
class SwapRecord:
    path: str
    entity: str
    rows: int
    dim: int
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int

    @classmethod
    def of(cls, ref: TableRef, entity: str, table: torch.Tensor, new: JPQEmbedding) -> SwapRecord:
        """Sizes of ``table`` before and of ``new`` after; frozen tables count no trainable parameters."""
        trainable = table.requires_grad
        return cls(
            ref.path,
            entity,
            ref.shape[0],
            ref.shape[1],
            table.numel() if trainable else 0,
            new.trainable_count() if trainable else 0,
            table.numel() * table.element_size(),
            new.compact_bytes(),
        )


# nn.Embedding options a JPQ table cannot honour: its rows are shared sub-embeddings (no per-row renorm
# or frequency scaling) and its gradient is dense (an optimizer such as SparseAdam would fail later).
UNSUPPORTED_EMBEDDING_OPTIONS = ("max_norm", "sparse", "scale_grad_by_freq")


def check_embedding_options(model: nn.Module, ref: TableRef) -> None:
    """Refuse an ``nn.Embedding`` table built with an option that compression would silently drop."""
    if ref.kind != "embedding":
        return
    parent, leaf = _resolve(model, ref.path)
    table = getattr(parent, leaf)
    used = [f"{o}={getattr(table, o)!r}" for o in UNSUPPORTED_EMBEDDING_OPTIONS if getattr(table, o, None) not in (None, False)]
    if used:
        raise JPQTargetError(
            f"table {ref.path} is an nn.Embedding with {', '.join(used)}, which a JPQ table cannot honour "
            f"(shared rows, dense gradient); build it without {', '.join(u.split('=')[0] for u in used)} "
            "or leave it out of jpq_targets"
        )


def inject_jpq(model: nn.Module, *args: Any, **kwargs: Any) -> list[SwapRecord]:
    """Validate every table, then swap each for a :class:`JPQEmbedding` sharing its entity's codes:
    :func:`build_jpq_tables` (same arguments), then :func:`swap_all`."""
    return swap_all(model, build_jpq_tables(model, *args, **kwargs))


def swap_all(model: nn.Module, built: list[tuple[TableRef, nn.Module, Any]]) -> list:
    """Swap in every ``(ref, new table, record)`` built beforehand (so a failing check or constructor changed
    nothing); the records, in order."""
    for ref, new, _ in built:
        swap_table(model, ref, new)
    return [record for _, _, record in built]


def build_jpq_tables(
    model: nn.Module,
    refs: list[TableRef],
    codes_for: Callable[[str], torch.Tensor],
    config: JPQConfig,
    row_scales: Callable[[], Mapping[str, torch.Tensor]] | None = None,
) -> list[tuple[TableRef, JPQEmbedding, SwapRecord]]:
    """Validate every table, then build a :class:`JPQEmbedding` for each sharing its entity's codes; nothing
    is swapped yet (:func:`swap_all`).

    ``codes_for(entity)`` returns ``[rows, M]`` codes; it is called once per entity, after all
    tables have passed the checks, so bad settings fail before any work or change. ``row_scales()``
    (called once, then) gives per-entity row scales (:func:`~urecjpq_plugin.assign.degree_scales`).
    """
    settings = {entity: config.for_table(entity) for entity in dict.fromkeys(r.entity for r in refs)}
    for ref in refs:
        settings[ref.entity].check_dim(ref.shape[1], table=ref.path)
        settings[ref.entity].check_rows(ref.shape[0], table=ref.path)
        check_embedding_options(model, ref)
    codes = {entity: codes_for(entity) for entity in settings}
    for ref in refs:
        M = settings[ref.entity].M
        if codes[ref.entity].shape != (ref.shape[0], M):
            raise JPQConfigError(
                f"codes for {ref.entity} have shape {tuple(codes[ref.entity].shape)}; "
                f"table {ref.path} needs {(ref.shape[0], M)}"
            )
    scales = dict(row_scales()) if row_scales is not None else {}
    built = []  # every new table first: a check in JPQEmbedding's constructor fails before any swap
    for ref in refs:
        parent, leaf = _resolve(model, ref.path)
        table, padding_idx = _table_of(parent, leaf, ref.kind)
        new = JPQEmbedding.from_table(
            table, codes[ref.entity].to(table.device), settings[ref.entity].ksub, padding_idx, config.split_dropout,
        )
        new.set_row_scale(scales.get(ref.entity))
        if config.unit_rows is True:  # auto is resolved by the caller (it knows the data and the model)
            new.set_unit_rows()
        built.append((ref, new, SwapRecord.of(ref, ref.entity, table, new)))
    return built


def subclass_with(cls: type, **members: object) -> type:
    """A same-named subclass of a host model class (hooks stay invisible to names, logs, registries)."""
    namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
    return type(cls.__name__, (cls,), {**namespace, "_urecjpq_wrapped": True, **members})


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def jpq_modules(model: nn.Module) -> dict[str, JPQEmbedding]:
    return {name: m for name, m in model.named_modules() if isinstance(m, JPQEmbedding)}


def table_settings(modules: Mapping[str, JPQEmbedding]) -> dict[str, dict[str, int]]:
    """``{path: {"M", "ksub"}}`` of compressed tables (``jpq_modules(model)``): what ``auto`` resolved to."""
    return {path: {"M": m.M, "ksub": m.ksub} for path, m in modules.items()}


def format_records(records: list[SwapRecord]) -> str:
    before = sum(r.params_before for r in records)
    after = sum(r.params_after for r in records)
    b_before = sum(r.bytes_before for r in records)
    b_after = sum(r.bytes_after for r in records)
    tables = ", ".join(f"{r.path}[{r.rows}x{r.dim}]->{r.entity}" for r in records)
    return (
        f"JPQ swapped {len(records)} ID tables ({tables}): trainable table parameters {before:,} -> {after:,}; "
        f"table bytes {b_before:,} -> {b_after:,} ({b_after / max(b_before, 1):.1%})"
    )

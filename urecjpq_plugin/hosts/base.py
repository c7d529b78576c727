"""What every host shares; a host module adds only what is its own (ID counts, the training matrix
or features, where its framework builds models, its checkpoint conventions).

- :func:`wrap_model_class` / :func:`hooked_get_model`: the one construction hook (compress right
  after the host's ``__init__``, check a state before ``load_state_dict``);
- :func:`check_state_matches`: the one refusal of a compressed/uncompressed mismatch;
- :func:`find_tables`: which tables, asked in order: the registry, YAML ``jpq_tables``, the host's
  own specs, the default rule;
- :func:`codes_source`: codes computed once per build, or placeholders while
  :func:`~urecjpq_plugin.apply.building_for_load` (a checkpoint brings the real ones);
- :class:`Patches`: every attribute and ``sys.modules`` entry a host replaces, restorable by ``deactivate()``.
"""

from __future__ import annotations

import re
import functools
from dataclasses import replace
from logging import getLogger
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from urecjpq_plugin.apply import JPQCheckpointError, is_building_for_load
from urecjpq_plugin.assign import degree_scales, resolve_unit_rows
from urecjpq_plugin.codes import code_dtype
from urecjpq_plugin.config import AUTO, JPQConfig, JPQConfigError, jpq_enabled
from urecjpq_plugin.inject import (
    SwapRecord,
    TableRef,
    find_id_tables,
    format_records,
    jpq_modules,
    list_candidate_tables,
    registered_tables,
    subclass_with,
)

__all__ = ["JPQCheckpointError", "Patches", "check_state_matches", "codes_source", "find_tables",
           "hooked_get_model", "log_swaps", "wrap_model_class", "yaml_tables"]

TABLES_KEY = "jpq_tables"
_MISSING = object()


# -- patches ----------------------------------------------------------------------------------------
class Patches:
    """Attributes (and ``sys.modules`` entries) a host replaced; :meth:`undo` puts every original back,
    newest first."""

    def __init__(self) -> None:
        self._restores: list[Callable[[], None]] = []
        self.active = False

    def set(self, owner: Any, name: str, value: Any) -> None:
        original = vars(owner).get(name, _MISSING)  # _MISSING: inherited or absent, so undo deletes ours
        self._restores.append(lambda: delattr(owner, name) if original is _MISSING else setattr(owner, name, original))
        setattr(owner, name, value)

    def set_item(self, mapping: dict, key: str, value: Any) -> None:
        """``mapping[key] = value`` (e.g. a stand-in module in ``sys.modules``), undone like :meth:`set`."""
        original = mapping.get(key, _MISSING)
        self._restores.append(lambda: mapping.pop(key, None) if original is _MISSING else mapping.__setitem__(key, original))
        mapping[key] = value

    def undo(self) -> None:
        for restore in reversed(self._restores):
            restore()
        self._restores.clear()
        self.active = False


# -- construction ---------------------------------------------------------------------------------
def wrap_model_class(
    cls: type,
    compress: Callable[[nn.Module, Any, Any], Any],
    cache: dict[type, type],
    before_init: Callable[[type, Any, Any], None] | None = None,
    after_init: Callable[[nn.Module], None] | None = None,
    members: Callable[[type], dict] | None = None,
    rewrap: Callable[[type], type] | None = None,
) -> type:
    """A same-named subclass of ``cls`` whose construction ends with ``compress(model, config, data)``
    when the config says ``jpq: true``, and whose ``load_state_dict`` checks the state first.

    ``members(cls)``: further host-specific overrides (they may call ``cls``'s methods).
    ``rewrap``: the host's module-level function that wraps a class (``rewrap(cls)`` gives this class);
    with it an instance pickles and deep-copies as "``cls``, wrapped again by ``rewrap``" (the
    subclass itself cannot be found by name: it is named as ``cls``).
    """
    if getattr(cls, "_urecjpq_wrapped", False):
        return cls
    if cls in cache:
        return cache[cls]

    def __init__(self: nn.Module, config: Any, data: Any) -> None:
        if before_init is not None:
            before_init(cls, config, data)
        cls.__init__(self, config, data)
        if after_init is not None:
            after_init(self)
        if jpq_enabled(config):
            compress(self, config, data)

    def load_state_dict(self: nn.Module, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        check_state_matches(self, state_dict)
        return cls.load_state_dict(self, state_dict, *args, **kwargs)

    extra = members(cls) if members is not None else {}
    if rewrap is not None:
        where = (rewrap.__module__, rewrap.__qualname__)

        def __reduce_ex__(self: nn.Module, protocol: int) -> tuple:
            return rebuild_wrapped, (cls, *where), self.__getstate__()

        extra["__reduce_ex__"] = __reduce_ex__
    cache[cls] = subclass_with(cls, __init__=__init__, load_state_dict=load_state_dict, **extra)
    return cache[cls]


def rebuild_wrapped(cls: type, module: str, wrap: str) -> nn.Module:
    """Unpickling a wrapped model: an empty instance of ``cls`` wrapped by the host's ``module.wrap``
    (its state is set after, by ``nn.Module.__setstate__``)."""
    import importlib

    wrapped = getattr(importlib.import_module(module), wrap)(cls)
    return wrapped.__new__(wrapped)


def hooked_get_model(original: Callable[[str], type], wrap: Callable[[type], type],
                     before: Callable[[str], None] | None = None,
                     after: Callable[[type], None] | None = None) -> Callable[[str], type]:
    """The host's ``get_model(name)``, returning the wrapped class; ``before``/``after`` see the name/class."""
    original = getattr(original, "_urecjpq_original", original)

    def get_model(model_name: str) -> type:
        if before is not None:
            before(model_name)
        cls = original(model_name)
        if after is not None:
            after(cls)
        return wrap(cls)

    get_model._urecjpq_original = original  # type: ignore[attr-defined]
    return get_model


# -- state --------------------------------------------------------------------------------------
def check_state_matches(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Refuse, in one line, a checkpoint whose tables are compressed where the model's are not, or back."""
    jpq_keys = [k for k in state_dict if k.endswith(".sub_embeddings")]
    modules = jpq_modules(model)
    name = type(model).__name__
    if jpq_keys and not modules:
        raise JPQCheckpointError(
            f"checkpoint holds JPQ-compressed tables ({', '.join(jpq_keys[:4])}) but {name} was built without "
            "them; activate urecjpq_plugin and set jpq: true to load it"
        )
    for path in modules:
        table = path[:-4] if path.endswith("_jpq") else path  # raw Parameters live beside as <name>_jpq
        table = re.sub(r"\.parts\.\d+$", "", table)  # a compressed row range of a shared table (RowRangeEmbedding)
        plain = next((k for k in (f"{table}.weight", table) if k in state_dict), None)
        if f"{path}.sub_embeddings" not in state_dict and (plain is not None or not jpq_keys):
            raise JPQCheckpointError(
                f"checkpoint holds an uncompressed table {plain or table} but {name} was built with jpq: true; "
                "load it with jpq: false (a RecBole checkpoint can be converted with `urecjpq compress`)"
            )


# -- which tables ---------------------------------------------------------------------------------
def yaml_tables(config: Any) -> dict[str, tuple[str, ...]] | None:
    """``jpq_tables: {user: [...], item: [...]}`` from a host config, checked; ``None`` when absent."""
    try:
        value = config[TABLES_KEY]
    except (KeyError, TypeError):
        return None
    if value is None:
        return None
    if isinstance(value, str):
        import yaml

        value = yaml.safe_load(value)
    ok = isinstance(value, Mapping) and value and all(
        isinstance(paths, (list, tuple, str)) and all(isinstance(p, str) for p in ([paths] if isinstance(paths, str) else paths))
        for paths in value.values()
    )
    if not ok:
        raise JPQConfigError(
            f"{TABLES_KEY}={value!r} is invalid; give table paths by entity, e.g. {TABLES_KEY}: "
            "{user: [user_embedding], item: [item_embedding]}"
        )
    return {str(e): (paths,) if isinstance(paths, str) else tuple(paths) for e, paths in value.items()}


def declared_tables(model: nn.Module, config: Any = None,
                    host_specs: Mapping[str, Iterable[str]] | None = None) -> tuple[dict | None, str]:
    """Table paths by entity and where they came from: ``registry``, ``yaml``, ``host specs`` or ``default rule``."""
    registered = registered_tables(model)
    if registered is not None:
        return dict(registered), "registry"
    from_yaml = yaml_tables(config)
    if from_yaml is not None:
        return from_yaml, "yaml"
    if host_specs is not None:
        present = {path for path, _, _ in list_candidate_tables(model)}
        # a host's specs name every variant of a model; paths absent in this instance are skipped
        return {e: tuple(p for p in paths if p in present) for e, paths in host_specs.items()}, "host specs"
    return None, "default rule"


def find_tables(model: nn.Module, counts: Mapping[str, int], targets: Iterable[str], config: Any = None,
                host_specs: Mapping[str, Iterable[str]] | None = None) -> tuple[list[TableRef], str]:
    """The ID tables of ``model`` for ``targets``, and where the match came from (see :func:`declared_tables`)."""
    declared, source = declared_tables(model, config, host_specs)
    return find_id_tables(model, counts, targets, declared, source), source


# -- codes and report ---------------------------------------------------------------------------
def codes_source(jcfg: JPQConfig, counts: Mapping[str, int], compute: Callable[[], Mapping[str, torch.Tensor]],
                 refs: Iterable[TableRef] | None = None) -> Callable[[str], torch.Tensor]:
    """``codes_for(entity)`` for :func:`~urecjpq_plugin.inject.inject_jpq`: ``compute()`` runs at most once,
    and not at all while building for a checkpoint load (zero codes; the checkpoint brings the real ones).
    With ``jpq_codes_from`` the codes come from that checkpoint's rows of the tables ``refs`` instead (a host
    that cannot name them passes ``None``, and such a config is refused here, before any change)."""
    cache: dict[str, torch.Tensor] = {}
    placeholder = is_building_for_load()
    if jcfg.codes_from is not None and not placeholder:
        if refs is None:
            raise JPQConfigError(f"jpq_codes_from={jcfg.codes_from!r}: this model keeps its user/item rows inside "
                                 "shared tables, whose trained rows the plugin cannot read off a checkpoint; leave "
                                 "jpq_codes_from out")
        from urecjpq_plugin.trained_codes import codes_for_tables

        compute = functools.partial(codes_for_tables, jcfg.codes_from, list(refs), counts, jcfg)

    def codes_for(entity: str) -> torch.Tensor:
        if placeholder:
            table_config = jcfg.for_table(entity)
            return torch.zeros(counts[entity], table_config.M, dtype=code_dtype(table_config.ksub))
        if not cache:
            cache.update(compute())
        return cache[entity]

    return codes_for


def model_is(model: nn.Module, names: Iterable[str]) -> bool:
    """Whether ``model``'s class (or a base class) has one of ``names`` (host model names)."""
    names = set(names)
    return any(cls.__name__ in names for cls in type(model).__mro__)


def row_scales_source(jcfg: JPQConfig, interactions: Callable[[], Any], model: nn.Module,
                      dot_product_models: Iterable[str] = ()) -> Callable[[], Mapping[str, torch.Tensor]]:
    """``row_scales()`` for :func:`~urecjpq_plugin.inject.inject_jpq`: the degree scales of the training
    matrix ``interactions()``; none while building for a checkpoint load (the checkpoint brings them).
    ``jpq_degree_scale: auto`` applies only to the host's ``dot_product_models`` (class names)."""
    known = model_is(model, dot_product_models)
    placeholder = is_building_for_load()
    return functools.cache(lambda: {} if placeholder else degree_scales(jcfg, interactions(), known))  # once per model


def unit_rows_for_model(jcfg: JPQConfig, interactions: Callable[[], Any], model: nn.Module,
                        measured_models: Iterable[str] = ()) -> JPQConfig:
    """``jcfg`` with ``jpq_unit_rows`` resolved for ``model``: ``auto`` is on for the host's ``measured_models``
    (class names) on sparse data; building for a checkpoint load it stays off (the checkpoint brings it)."""
    if jcfg.unit_rows != AUTO:
        return jcfg
    if is_building_for_load() or not model_is(model, measured_models):
        return replace(jcfg, unit_rows=False)
    return replace(jcfg, unit_rows=resolve_unit_rows(jcfg, interactions()))


def log_swaps(records: list[SwapRecord], jcfg: JPQConfig, before: int, after: int, extra: Iterable[str] = ()) -> None:
    logger = getLogger()
    if records:
        logger.info(format_records(records))
    for line in extra:
        logger.info(line)
    how = "checkpoint" if is_building_for_load() else (
        f"k-means of {jcfg.codes_from}" if jcfg.codes_from is not None else jcfg.code_assign)
    overrides = "".join(f" {t}: {dict(v)}" for t, v in jcfg.table_overrides)
    logger.info(f"urecjpq: JPQ M={jcfg.M} ksub={jcfg.ksub}{overrides} codes={how} targets={list(jcfg.targets)}: "
                f"trainable parameters {before:,} -> {after:,}")

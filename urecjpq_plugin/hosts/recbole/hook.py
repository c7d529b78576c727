"""RecBole host: compress the ID tables of any RecBole model built while the plugin is active.

``activate()`` wraps ``get_model`` wherever RecBole binds it (``run_recbole``,
``objective_function``, ``load_data_and_model`` all go through ``recbole.quick_start``'s binding),
so every model is built by a thin subclass whose ``__init__`` swaps the tables right after the
host's own initialisation and before any trainer or optimizer exists. With ``jpq`` off, models are
built as usual. RecBole is imported lazily; nothing happens at import time.
"""

from __future__ import annotations

import functools
import sys
import types
from dataclasses import replace
from logging import getLogger
from typing import Any, Callable

import torch
from torch import nn

from urecjpq_plugin.apply import JPQCheckpointError, building_for_load, is_building_for_load
from urecjpq_plugin.assign import assign_codes, resolve_auto
from urecjpq_plugin.config import AUTO, JPQConfig, JPQConfigError
from urecjpq_plugin.inject import count_trainable, inject_jpq, jpq_modules
from urecjpq_plugin.hosts.base import (Patches, check_state_matches, codes_source, find_tables, hooked_get_model, log_swaps, model_is,
                   row_scales_source, unit_rows_for_model, wrap_model_class)

__all__ = ["JPQCheckpointError", "activate", "check_state_matches", "compress_model", "compute_codes",
           "deactivate", "is_active", "load_data_and_model", "run"]

_WRAPPED: dict[type, type] = {}
# Models whose score is a dot product of the ID rows: where jpq_degree_scale: auto applies (measured on
# Amazon Baby, 3 seeds: BPR -10.7 % -> -5.5 % with svd_pq codes). Not LightGCN: with RecBole's settings
# (2 layers, reg 1e-5; plain-PyTorch harness) the scale gained on Baby (svd_pq_cos codes, seed 2020:
# -11.3 % -> -8.9 %) but held it at its popularity ranking on TikTok (-7.4 % -> -32.6 %; the same with
# svd_pq and its per-split variant codes): small rows for rarely seen IDs skew what propagation averages.
# NGCF, whose layers transform the rows, lost -6.6 % -> -37.6 % with it (seed 2020); other models are
# unmeasured and keep the rows unscaled unless jpq_degree_scale is set.
DEGREE_SCALE_MODELS = ("BPR",)
# jpq_code_assign: auto gives these models svd_pq where it would give svd_pq_cos (sparse data): NGCF, whose
# layers transform the rows, and SimpleX, which scores by cosine, lost far more with codes from directions on
# Amazon Baby (seed 2020, recall@20 vs uncompressed, svd_pq / svd_pq_cos: NGCF -6.6 % / -45.4 %, SimpleX
# -2.7 % / -15.3 %), while BPR and LightGCN gained (docs/benchmarks.md).
RAW_FACTOR_CODE_MODELS = ("NGCF", "SimpleX")
# jpq_unit_rows: auto turns unit rows on for these models on sparse data. Amazon Baby, 3 seeds, recall@20 /
# NDCG@20 vs uncompressed, without -> with: BPR -0.1 % / -6.4 % -> +5.9 % / +4.7 %, LightGCN -13.0 % / -14.2 %
# -> -5.1 % / -6.9 % (docs/benchmarks.md, "Sparse catalogues", eleventh round). On TikTok LightGCN trades:
# -8.7 % / -9.1 % -> -10.5 % / -16.0 % (BPR +22.5 % -> +40.2 % recall@20). Other models are unmeasured: off.
UNIT_ROW_MODELS = ("BPR", "LightGCN")
_PATCHES = Patches()
# RecBole modules that call torch.load on its own pickled checkpoints (config objects inside).
_TORCH_LOAD_MODULES = ("recbole.trainer.trainer",)


# -- compatibility with today's torch ---------------------------------------------------------
class _TorchLoadsPickles(types.ModuleType):
    """``torch`` as seen by one RecBole module: ``torch.load`` defaults to ``weights_only=False``.

    RecBole pickles its ``Config`` into checkpoints; torch >= 2.6 refuses that by default. Only the
    RecBole modules listed get this view; the real ``torch`` module is untouched.
    """

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("weights_only", False)
        return torch.load(*args, **kwargs)


def _let_module_load_pickles(module: types.ModuleType) -> None:
    if torch.__version__ >= "2.6" and getattr(module, "torch", None) is torch:
        _PATCHES.set(module, "torch", _TorchLoadsPickles())


def _model_module_loads_pickles(cls: type) -> None:
    module = sys.modules.get(cls.__module__)
    if module is not None:
        _let_module_load_pickles(module)  # NeuMF/ConvNCF/... load pretrained checkpoints


# -- model construction -----------------------------------------------------------------------
def _other_parameter(cls: type) -> dict:
    def other_parameter(self: nn.Module) -> Any:
        # RecBole caches the propagated full tables as restore_user_e/restore_item_e; they are
        # recomputed from the weights on the first full-sort prediction, so a compact checkpoint
        # stores None instead of two decoded [N, d] tables.
        state = cls.other_parameter(self)
        if jpq_modules(self):
            state = {k: (None if k.startswith("restore_") else v) for k, v in state.items()}
        return state

    return {"other_parameter": other_parameter}


def _wrap_model_class(cls: type) -> type:
    """Subclass ``cls`` so construction ends with the JPQ swap (when the config asks for it)."""
    return wrap_model_class(cls, compress_model, _WRAPPED, members=_other_parameter, rewrap=_wrap_model_class)


def compute_codes(config: JPQConfig, dataset: Any, interactions: Callable[[], Any] | None = None) -> dict[str, torch.Tensor]:
    """Codes per entity from the dataset the model is built with (RecBole passes the train split);
    ``interactions()``: its training matrix when the caller already builds it."""
    counts = {"user": dataset.user_num, "item": dataset.item_num}
    matrix = interactions or (lambda: dataset.inter_matrix(form="csr"))
    inter = matrix() if config.code_assign != "random" else None
    return assign_codes(config, inter, counts, host="the RecBole host")


def auto_codes_for_model(jcfg: JPQConfig, model: nn.Module, interactions: Callable[[], Any]) -> JPQConfig:
    """``jpq_code_assign: auto`` resolved here for :data:`RAW_FACTOR_CODE_MODELS` (``svd_pq`` instead of
    ``svd_pq_cos``); every other model, and any explicit assignment, is left to :func:`assign_codes`."""
    if (jcfg.code_assign != AUTO or jcfg.codes_from is not None or not model_is(model, RAW_FACTOR_CODE_MODELS)
            or is_building_for_load()):
        return jcfg
    how = resolve_auto(interactions(), directions=False)
    if how == "svd":  # dense data: the same for every model, left to assign_codes (which logs it)
        return jcfg
    getLogger().info(f"urecjpq: jpq_code_assign=auto -> {how} ({type(model).__name__}: codes from raw SVD factors)")
    return replace(jcfg, code_assign=how)


def compress_model(model: nn.Module, config: Any, dataset: Any) -> list:
    """Swap ``model``'s user/item tables for JPQ tables; all checks run before any change."""
    jcfg = JPQConfig.from_mapping(config)
    if jcfg.feature_targets:
        raise JPQConfigError(
            f"jpq_targets {list(jcfg.feature_targets)} are multimodal feature tables, which only the MMRec "
            "host has; valid here: user, item"
        )
    from urecjpq_plugin.hosts.recbole.context import compress_context_model, is_context_model

    training_matrix = functools.cache(lambda: dataset.inter_matrix(form="csr"))  # codes and degree scales share it
    codes = functools.partial(compute_codes, interactions=training_matrix)
    scales = row_scales_source(jcfg, training_matrix, model, DEGREE_SCALE_MODELS)
    jcfg = unit_rows_for_model(jcfg, training_matrix, model, UNIT_ROW_MODELS)
    if is_context_model(model):  # user/item rows inside shared token tables
        return compress_context_model(model, config, dataset, jcfg, codes, scales)
    counts = {"user": dataset.user_num, "item": dataset.item_num}
    refs, _ = find_tables(model, counts, jcfg.id_targets, config)
    jcfg = jcfg.for_dims(r.shape[1] for r in refs)  # jpq_M: auto -> M from the tables' width
    jcfg = auto_codes_for_model(jcfg, model, training_matrix)
    before = count_trainable(model)
    records = inject_jpq(model, refs, codes_source(jcfg, counts, lambda: codes(jcfg, dataset), refs), jcfg, scales)
    from urecjpq_plugin.hosts.recbole.topk import install_pq_full_sort

    install_pq_full_sort(model)  # full-sort scoring from codes where the item score is a plain dot product
    log_swaps(records, jcfg, before, count_trainable(model))
    model._urecjpq_records = records
    return records


# -- checkpoint loading -----------------------------------------------------------------------
def load_data_and_model(model_file: str):
    """RecBole's ``load_data_and_model``, loading its pickled checkpoint under torch >= 2.6."""
    from recbole.config import Config  # noqa: F401  (unpickling needs it importable)
    from recbole.data import create_dataset, data_preparation
    from recbole.quick_start import quick_start
    from recbole.utils import init_logger, init_seed

    from urecjpq_plugin.checkpoint_file import read_checkpoint_file

    checkpoint = read_checkpoint_file(model_file, needs=("config", "state_dict"), written_by="a RecBole trainer")
    config = checkpoint["config"]
    from urecjpq_plugin.hosts.recbole.compat import set_numpy1_aliases

    set_numpy1_aliases()  # what building a Config sets; this one was unpickled (np.float: RecBole's metrics)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    with building_for_load():  # placeholder codes: the checkpoint brings the real ones
        model = quick_start.get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


def activate() -> None:
    """Install the hook (idempotent). Call before building models; ``jpq: true`` then compresses."""
    if _PATCHES.active:
        return
    import importlib

    from urecjpq_plugin.hosts.recbole.compat import apply as apply_recbole_compat

    apply_recbole_compat()  # numpy 2 / new scipy / no ray: shims only where the stack needs them
    import recbole.quick_start as qs_pkg
    import recbole.utils as utils_pkg
    from recbole.quick_start import quick_start
    from recbole.utils import utils

    hooked = hooked_get_model(utils.get_model, _wrap_model_class, after=_model_module_loads_pickles)
    for module in (quick_start, utils, utils_pkg):
        _PATCHES.set(module, "get_model", hooked)
    for module in (quick_start, qs_pkg):
        _PATCHES.set(module, "load_data_and_model", load_data_and_model)
    for name in _TORCH_LOAD_MODULES:
        _let_module_load_pickles(importlib.import_module(name))
    _PATCHES.active = True


def deactivate() -> None:
    """Undo :func:`activate`: every RecBole attribute it (or a hooked ``get_model``) replaced is restored.
    Models built meanwhile keep their JPQ tables; the compatibility shims are taken out too."""
    from urecjpq_plugin.hosts.recbole.compat import remove as remove_recbole_compat

    _PATCHES.undo()
    remove_recbole_compat()


def is_active() -> bool:
    return _PATCHES.active


def run(model: str, dataset: str, **kwargs: Any) -> Any:
    """``recbole.quick_start.run`` with the plugin active (in every rank when ``nproc``/``world_size`` ask for many)."""
    activate()
    if kwargs.get("nproc", 1) > 1 or kwargs.get("world_size", -1) > 0:
        # Spawned ranks do not inherit this process's hooks; this runner re-installs them in each.
        from urecjpq_plugin.hosts.recbole.ddp import run_distributed

        return run_distributed(model, dataset, activate=activate, **kwargs)
    from recbole.quick_start import run as recbole_run

    return recbole_run(model, dataset, **kwargs)

"""RecBole host: compress the ID tables of any RecBole model built while the plugin is active.

``activate()`` wraps ``get_model`` wherever RecBole binds it (``run_recbole``,
``objective_function``, ``load_data_and_model`` all go through ``recbole.quick_start``'s binding),
so every model is built by a thin subclass whose ``__init__`` swaps the tables right after the
host's own initialisation and before any trainer or optimizer exists. With ``jpq`` off, models are
built as usual. RecBole is imported lazily; nothing happens at import time.
"""

from __future__ import annotations

import sys
import types
from logging import getLogger
from typing import Any

import torch
from torch import nn

from ..assign import assign_codes
from ..config import JPQConfig, JPQConfigError, URecJPQError, jpq_enabled
from ..inject import count_trainable, find_id_tables, format_records, inject_jpq, jpq_modules, subclass_with

_WRAPPED: dict[type, type] = {}
_ACTIVE = False
# RecBole modules that call torch.load on its own pickled checkpoints (config objects inside).
_TORCH_LOAD_MODULES = ("recbole.trainer.trainer",)


class JPQCheckpointError(URecJPQError):
    """A checkpoint and the model being loaded disagree on whether tables are JPQ-compressed."""


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
    if getattr(module, "torch", None) is torch:
        module.torch = _TorchLoadsPickles()


# -- model construction -----------------------------------------------------------------------
def _wrap_model_class(cls: type) -> type:
    """Subclass ``cls`` so construction ends with the JPQ swap (when the config asks for it)."""
    if getattr(cls, "_urecjpq_wrapped", False):
        return cls
    if cls in _WRAPPED:
        return _WRAPPED[cls]

    def __init__(self: nn.Module, config: Any, dataset: Any) -> None:
        cls.__init__(self, config, dataset)
        if jpq_enabled(config):
            compress_model(self, config, dataset)

    def load_state_dict(self: nn.Module, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        check_state_matches(self, state_dict)
        return cls.load_state_dict(self, state_dict, *args, **kwargs)

    def other_parameter(self: nn.Module) -> Any:
        # RecBole caches the propagated full tables as restore_user_e/restore_item_e; they are
        # recomputed from the weights on the first full-sort prediction, so a compact checkpoint
        # stores None instead of two decoded [N, d] tables.
        state = cls.other_parameter(self)
        if jpq_modules(self):
            state = {k: (None if k.startswith("restore_") else v) for k, v in state.items()}
        return state

    wrapped = subclass_with(
        cls, __init__=__init__, load_state_dict=load_state_dict, other_parameter=other_parameter
    )
    _WRAPPED[cls] = wrapped
    return wrapped


def _get_model_with_jpq(original: Any) -> Any:
    def get_model(model_name: str) -> type:
        cls = original(model_name)
        module = sys.modules.get(cls.__module__)
        if module is not None and torch.__version__ >= "2.6":
            _let_module_load_pickles(module)  # NeuMF/ConvNCF/... load pretrained checkpoints
        return _wrap_model_class(cls)

    get_model._urecjpq_original = original  # type: ignore[attr-defined]
    return get_model


def compute_codes(config: JPQConfig, dataset: Any) -> dict[str, torch.Tensor]:
    """Codes per entity from the dataset the model is built with (RecBole passes the train split)."""
    counts = {"user": dataset.user_num, "item": dataset.item_num}
    inter = dataset.inter_matrix(form="csr") if config.code_assign != "random" else None
    return assign_codes(config, inter, counts, host="the RecBole host")


def compress_model(model: nn.Module, config: Any, dataset: Any) -> list:
    """Swap ``model``'s user/item tables for JPQ tables; all checks run before any change."""
    jcfg = JPQConfig.from_mapping(config)
    if jcfg.feature_targets:
        raise JPQConfigError(
            f"jpq_targets {list(jcfg.feature_targets)} are multimodal feature tables, which only the MMRec "
            "host has; valid here: user, item"
        )
    counts = {"user": dataset.user_num, "item": dataset.item_num}
    refs = find_id_tables(model, counts, jcfg.id_targets)
    jcfg = jcfg.for_dims(r.shape[1] for r in refs)  # jpq_M: auto -> M from the tables' width
    before = count_trainable(model)
    cache: dict[str, torch.Tensor] = {}

    def codes_for(entity: str) -> torch.Tensor:
        if not cache:
            cache.update(compute_codes(jcfg, dataset))
        return cache[entity]

    records = inject_jpq(model, refs, codes_for, jcfg)
    from .recbole_topk import install_pq_full_sort

    install_pq_full_sort(model)  # full-sort scoring from codes where the item score is a plain dot product
    logger = getLogger()
    logger.info(format_records(records))
    logger.info(
        f"JPQ M={jcfg.M} ksub={jcfg.ksub} codes={jcfg.code_assign}: trainable parameters {before:,} -> "
        f"{count_trainable(model):,}"
    )
    model._urecjpq_records = records
    return records


def check_state_matches(model: nn.Module, state_dict: Any) -> None:
    """Refuse, with a one-line reason, a checkpoint whose tables do not match the model's."""
    jpq_keys = [k for k in state_dict if k.endswith(".sub_embeddings")]
    modules = jpq_modules(model)
    if jpq_keys and not modules:
        raise JPQCheckpointError(
            f"checkpoint holds JPQ-compressed tables ({', '.join(jpq_keys[:4])}) but {type(model).__name__} "
            "was built without them; activate urecjpq_plugin and set jpq: true to load it"
        )
    for name, module in modules.items():
        prefix = name[:-4] if name.endswith("_jpq") else name
        if f"{name}.sub_embeddings" not in state_dict and f"{prefix}.weight" in state_dict:
            raise JPQCheckpointError(
                f"checkpoint holds an uncompressed table {prefix}.weight but the model was built with jpq: true; "
                "load it with jpq: false, or convert it with `urecjpq compress`"
            )


# -- checkpoint loading -----------------------------------------------------------------------
def load_data_and_model(model_file: str):
    """RecBole's ``load_data_and_model``, loading its pickled checkpoint under torch >= 2.6."""
    from recbole.config import Config  # noqa: F401  (unpickling needs it importable)
    from recbole.data import create_dataset, data_preparation
    from recbole.quick_start import quick_start
    from recbole.utils import init_logger, init_seed

    from ..checkpoint_file import read_checkpoint_file

    checkpoint = read_checkpoint_file(model_file, needs=("config", "state_dict"), written_by="a RecBole trainer")
    config = checkpoint["config"]
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = quick_start.get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


def activate() -> None:
    """Install the hook (idempotent). Call before building models; ``jpq: true`` then compresses."""
    global _ACTIVE
    if _ACTIVE:
        return
    import importlib

    from .recbole_compat import apply as apply_recbole_compat

    apply_recbole_compat()  # numpy 2 / new scipy / no ray: shims only where the stack needs them
    import recbole.quick_start as qs_pkg
    import recbole.utils as utils_pkg
    from recbole.quick_start import quick_start
    from recbole.utils import utils

    hooked = _get_model_with_jpq(utils.get_model)
    for module in (quick_start, utils, utils_pkg):
        module.get_model = hooked
    quick_start.load_data_and_model = load_data_and_model
    qs_pkg.load_data_and_model = load_data_and_model
    if torch.__version__ >= "2.6":
        for name in _TORCH_LOAD_MODULES:
            _let_module_load_pickles(importlib.import_module(name))
    _ACTIVE = True


def is_active() -> bool:
    return _ACTIVE


def run(model: str, dataset: str, **kwargs: Any) -> Any:
    """``recbole.quick_start.run`` with the plugin active (in every rank when ``nproc``/``world_size`` ask for many)."""
    activate()
    if kwargs.get("nproc", 1) > 1 or kwargs.get("world_size", -1) > 0:
        # Spawned ranks do not inherit this process's hooks; this runner re-installs them in each.
        from .recbole_ddp import run_distributed

        return run_distributed(model, dataset, **kwargs)
    from recbole.quick_start import run as recbole_run

    return recbole_run(model, dataset, **kwargs)

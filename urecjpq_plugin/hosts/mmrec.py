"""MMRec host: every model built by MMRec's ``quick_start`` gets JPQ tables when the config says ``jpq: true``.

``activate()`` replaces the names ``quick_start`` bound by from-import (``get_model``,
``get_trainer``, ``Config``) in ``utils.quick_start`` (and ``get_model`` in ``utils.utils``):

- ``get_model(name)`` returns a thin subclass whose ``__init__`` runs MMRec's, then swaps the
  tables (:func:`compress_model`) before any trainer or optimizer exists, so every combination of
  MMRec's grid search is compressed;
- ``get_trainer()`` returns a Trainer subclass that keeps the best model's state (MMRec saves
  none) and writes it to ``<checkpoint_dir>/<model>-<dataset>-<tag>.pth`` (state_dict + config);
- ``Config`` wraps a scalar given for a grid-searched key into a one-element list.

Which tables: :data:`TABLE_SPECS` (module-qualified class names; MMRec's ``BPR``/``LightGCN`` share
names with RecBole's). Unknown models fall back to the core name/row rule. ``user_item`` is GRCN's
one table holding users then items: one :class:`JPQEmbedding` with ``2 * ksub`` sub-ids per split,
codes ``cat(user_codes, item_codes + ksub)``, so users and items keep separate codebook halves.

MMRec is imported lazily: its ``src`` must be on ``sys.path`` (and the working directory, since
its ``Config`` reads ``./configs``).
"""

from __future__ import annotations

import os
import sys
import time
from logging import getLogger
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..assign import assign_codes
from ..codes import random_codes
from ..config import JPQConfig, URecJPQError, jpq_enabled
from ..features import FeatureSwap, check_feature_dim, pq_feature_table
from ..inject import (
    JPQTargetError,
    SwapRecord,
    TableRef,
    count_trainable,
    format_records,
    inject_jpq,
    jpq_modules,
    list_candidate_tables,
    match_id_tables,
    subclass_with,
    swap_table,
)
from ..jpq import JPQEmbedding
from . import mmrec_compat

_EMB = {"user": ("user_embedding",), "item": ("item_id_embedding",)}
_PREFERENCE = ("v_gcn.preference", "t_gcn.preference")
#: MMRec's ID tables by module-qualified class name; paths absent in a model instance are skipped
#: (e.g. ``v_gcn.preference`` exists only with image features).
TABLE_SPECS: dict[str, dict[str, tuple[str, ...]]] = {
    "models.bpr.BPR": {"user": ("user_embedding",), "item": ("item_embedding",)},
    "models.vbpr.VBPR": {"user": ("u_embedding",), "item": ("i_embedding",)},
    "models.lightgcn.LightGCN": {"user": ("embedding_dict.user_emb",), "item": ("embedding_dict.item_emb",)},
    "models.selfcfed_lgn.SELFCFED_LGN": {
        "user": ("online_encoder.embedding_dict.user_emb",),
        "item": ("online_encoder.embedding_dict.item_emb",),
    },
    "models.layergcn.LayerGCN": {"user": ("user_embeddings",), "item": ("item_embeddings",)},
    "models.bm3.BM3": _EMB,
    "models.freedom.FREEDOM": _EMB,
    "models.lattice.LATTICE": _EMB,
    "models.mgcn.MGCN": _EMB,
    "models.lgmrec.LGMRec": _EMB,
    "models.smore.SMORE": _EMB,
    "models.damrs.DAMRS": _EMB,
    "models.mmgcf.MMGCF": _EMB,
    "models.slmrec.SLMRec": {"user": ("embedding_user",), "item": ("embedding_item",)},
    "models.grcn.GRCN": {"user_item": ("id_gcn.id_embedding",), "user": _PREFERENCE},
    "models.dualgnn.DualGNN": {"user": _PREFERENCE},
    "models.dragon.DRAGON": {"user": _PREFERENCE},
    "models.pgl.PGL": {"user": ("user_text", "user_image")},
}
#: models whose ID tables are plain tensors that MMRec never trains (not Parameters)
UNTRAINED_TABLES = {
    "models.mmgcn.MMGCN": "id_embedding and the v_gcn/t_gcn preference tables",
    "models.mvgae.MVGAE": "collaborative and the v_gcn/t_gcn preference tables",
}
FEATURE_TABLES = {"image": "image_embedding", "text": "text_embedding"}
#: forward caches read by full_sort_predict; saved with the checkpoint so evaluation can reload
CACHE_ATTRS = ("result_embed", "result")

_WRAPPED: dict[type, type] = {}
_ACTIVE = False
_SAVED_BEST: dict[str, float] = {}  # checkpoint path -> best valid score written in this process
RUNS: list[dict] = []  # one record per Trainer.fit (per grid combination)


class JPQCheckpointError(URecJPQError):
    """A checkpoint and the model being loaded disagree (compressed vs not, model, dataset)."""


# -- which tables ---------------------------------------------------------------------------------
def class_key(model: nn.Module | type) -> str:
    cls = model if isinstance(model, type) else type(model)
    for klass in cls.__mro__:
        key = f"{klass.__module__}.{klass.__qualname__}"
        if key in TABLE_SPECS or key in UNTRAINED_TABLES:
            return key
    return f"{cls.__module__}.{cls.__qualname__}"


def entity_counts(n_users: int, n_items: int) -> dict[str, int]:
    return {"user": n_users, "item": n_items, "user_item": n_users + n_items}


def id_table_refs(model: nn.Module, counts: Mapping[str, int], targets: tuple[str, ...]) -> list[TableRef]:
    """The ID tables of ``model`` for ``targets`` (``user_item`` joins when both user and item are asked)."""
    if "user" in targets and "item" in targets:
        targets = targets + ("user_item",)
    candidates = list_candidate_tables(model)
    spec = TABLE_SPECS.get(class_key(model))
    if spec is None:
        return match_id_tables(candidates, counts, targets)
    present = {path for path, _, _ in candidates}
    registered = {entity: [p for p in paths if p in present] for entity, paths in spec.items()}
    return match_id_tables(candidates, counts, targets, registered)


def feature_tables(model: nn.Module) -> dict[str, nn.Module]:
    """``{target: module}`` for the multimodal feature tables the model has (Embedding or JPQEmbedding)."""
    found = {}
    for target, name in FEATURE_TABLES.items():
        module = getattr(model, name, None)
        if isinstance(module, (nn.Embedding, JPQEmbedding)):
            found[target] = module
    return found


def table_parameters(model: nn.Module, n_users: int, n_items: int) -> tuple[int, int]:
    """Trainable parameters in (ID tables, feature tables), compressed or not."""
    spec = TABLE_SPECS.get(class_key(model))
    if spec is not None:
        paths = [p for entity_paths in spec.values() for p in entity_paths]
    else:
        paths = [r.path for r in id_table_refs(model, entity_counts(n_users, n_items), ("user", "item"))]
    id_names = {n for p in paths for n in (p, f"{p}.weight")}
    for name in jpq_modules(model):  # compressed tables: <path>.sub_embeddings or <path>_jpq.sub_embeddings
        if name not in FEATURE_TABLES.values():
            id_names.add(f"{name}.sub_embeddings")
    feature_prefixes = tuple(f"{n}." for n in FEATURE_TABLES.values())
    # A Parameter may be registered under several names (DualGNN's forward stores t_gcn.preference
    # as self.t_preference too); classify it by all of them, count it once.
    names_of: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), (param, []))[1].append(name)
    id_params = feature_params = 0
    for param, names in names_of.values():
        if not param.requires_grad:
            continue
        if any(n.startswith(feature_prefixes) for n in names):
            feature_params += param.numel()
        elif any(n in id_names for n in names):
            id_params += param.numel()
    return id_params, feature_params


# -- codes ----------------------------------------------------------------------------------------
def load_item_features(model: nn.Module, config: Any) -> list[np.ndarray]:
    """The modality features MMRec loaded (``v_feat``/``t_feat``), else read from the dataset folder."""
    feats = [f for f in (getattr(model, "v_feat", None), getattr(model, "t_feat", None)) if f is not None]
    if feats:
        return [f.detach().cpu().numpy() for f in feats]
    folder = os.path.abspath(str(config["data_path"]) + str(config["dataset"]))
    out = []
    for key in ("vision_feature_file", "text_feature_file"):
        path = os.path.join(folder, str(config[key]))
        if config[key] and os.path.isfile(path):
            out.append(np.load(path, allow_pickle=True).astype(np.float32))
    return out


def compute_codes(jcfg: JPQConfig, dataloader: Any, model: nn.Module, config: Any) -> dict[str, torch.Tensor]:
    """User/item codes from the training split (``dataloader`` is MMRec's train loader)."""
    inter = dataloader.inter_matrix(form="csr").astype(np.float32)
    features = load_item_features(model, config) if jcfg.code_assign.startswith("features") else None
    return assign_codes(jcfg, inter, item_features=features, host="the MMRec host")


def _joint_codes(codes: Mapping[str, torch.Tensor], ksub: int) -> torch.Tensor:
    """Users then items in one table, items shifted to the upper half of a ``2 * ksub`` codebook."""
    return torch.cat([codes["user"].long(), codes["item"].long() + ksub], dim=0)


# -- compression ----------------------------------------------------------------------------------
def compress_model(model: nn.Module, config: Any, dataloader: Any, placeholder: bool = False) -> dict:
    """Swap ``model``'s ID (and requested feature) tables; every check runs before any change.

    ``placeholder=True`` builds the compressed structure with zero codes (no SVD/k-means), for
    loading a checkpoint that brings its own codes and sub-embeddings.
    """
    jcfg = JPQConfig.from_mapping(config)
    key, name = class_key(model), type(model).__name__
    logger = getLogger()
    if jcfg.id_targets and key in UNTRAINED_TABLES:
        raise JPQTargetError(
            f"{name} keeps {UNTRAINED_TABLES[key]} as plain tensors that MMRec never trains (not nn.Parameter), "
            "so JPQ has nothing to compress; run it without --jpq"
        )
    n_users = dataloader.dataset.get_user_num()
    n_items = dataloader.dataset.get_item_num()
    counts = entity_counts(n_users, n_items)
    refs = id_table_refs(model, counts, jcfg.id_targets) if jcfg.id_targets else []
    if jcfg.id_targets and not refs:
        present = [f"{p} {list(s)}" for p, _, s in list_candidate_tables(model)]
        raise JPQTargetError(
            f"{name} has no ID table for jpq_targets={list(jcfg.id_targets)} (2-D tables present: "
            f"{', '.join(present) or 'none'}); add it to urecjpq_plugin.hosts.mmrec.TABLE_SPECS[{key!r}]"
        )
    tables = feature_tables(model)
    wanted_features = {t: tables[t] for t in jcfg.feature_targets if t in tables}
    for target in jcfg.feature_targets:
        if target not in tables:
            logger.warning(
                f"urecjpq: jpq_targets includes {target}, but {name} has no {FEATURE_TABLES[target]} table "
                "(it uses the raw features without a fine-tuned table); nothing to compress there"
            )
    # jpq_M: auto -> from the ID tables' width; feature tables share that M.
    jcfg = jcfg.for_dims([r.shape[1] for r in refs] or [m.weight.shape[1] for m in wanted_features.values()])
    for ref in refs:
        jcfg.check_dim(ref.shape[1], table=ref.path)
    for target, module in wanted_features.items():
        check_feature_dim(module.weight.shape[1], jcfg.M, FEATURE_TABLES[target])

    before = count_trainable(model)
    joint = [r for r in refs if r.entity == "user_item"]
    plain = [r for r in refs if r.entity != "user_item"]
    cache: dict[str, torch.Tensor] = {}

    def codes_for(entity: str) -> torch.Tensor:
        if not cache:
            if placeholder:
                cache.update({e: random_codes(counts[e], jcfg.M, jcfg.ksub, 0) for e in ("user", "item")})
            else:
                cache.update(compute_codes(jcfg, dataloader, model, config))
        return cache[entity]

    records = inject_jpq(model, plain, codes_for, jcfg)
    for ref in joint:
        records.append(_swap_joint(model, ref, codes_for, jcfg))
    swaps: list[FeatureSwap] = []
    for target, module in wanted_features.items():
        new, swap = pq_feature_table(module.weight, jcfg.M, jcfg.ksub, jcfg.seed, FEATURE_TABLES[target], placeholder)
        swap_table(model, TableRef(FEATURE_TABLES[target], target, "embedding", tuple(module.weight.shape)), new)
        swaps.append(swap)
    if records:
        logger.info(format_records(records))
    for swap in swaps:
        logger.info(f"urecjpq: JPQ feature table {swap.describe()}")
    logger.info(
        f"urecjpq: JPQ M={jcfg.M} ksub={jcfg.ksub} codes={jcfg.code_assign} targets={list(jcfg.targets)}: "
        f"trainable parameters {before:,} -> {count_trainable(model):,}"
    )
    summary = {"records": records, "features": swaps}
    model._urecjpq_summary = summary
    return summary


def _swap_joint(model: nn.Module, ref: TableRef, codes_for: Any, jcfg: JPQConfig) -> SwapRecord:
    """GRCN's users-then-items table: one JPQEmbedding over a ``2 * ksub`` codebook."""
    parent_path, _, leaf = ref.path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    table = parent._parameters[leaf] if ref.kind == "parameter" else getattr(parent, leaf).weight
    codes = _joint_codes({"user": codes_for("user"), "item": codes_for("item")}, jcfg.ksub)
    new = JPQEmbedding.from_table(table, codes.to(table.device), 2 * jcfg.ksub)
    record = SwapRecord.of(ref, "user+item", table, new)
    swap_table(model, ref, new)
    return record


def check_state_matches(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """One-line refusal when the checkpoint's tables are compressed and the model's are not, or back."""
    ckpt_jpq = any(k.endswith("sub_embeddings") for k in state_dict)
    model_jpq = bool(jpq_modules(model))
    if ckpt_jpq and not model_jpq:
        raise JPQCheckpointError(
            f"checkpoint holds JPQ-compressed tables but {type(model).__name__} was built without them; set jpq: true"
        )
    if model_jpq and not ckpt_jpq:
        raise JPQCheckpointError(
            f"checkpoint holds uncompressed tables but {type(model).__name__} was built with jpq: true; set jpq: false"
        )


# -- the hook -------------------------------------------------------------------------------------
_LOADING = {"placeholder": False}


def _wrap_model_class(cls: type) -> type:
    if getattr(cls, "_urecjpq_wrapped", False):
        return cls
    if cls in _WRAPPED:
        return _WRAPPED[cls]

    def __init__(self: nn.Module, config: Any, dataloader: Any) -> None:
        mmrec_compat.before_init(cls.__name__, config, dataloader)
        cls.__init__(self, config, dataloader)
        mmrec_compat.after_init(self)
        if jpq_enabled(config):
            compress_model(self, config, dataloader, placeholder=_LOADING["placeholder"])

    def load_state_dict(self: nn.Module, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        check_state_matches(self, state_dict)
        return cls.load_state_dict(self, state_dict, *args, **kwargs)

    wrapped = subclass_with(cls, __init__=__init__, load_state_dict=load_state_dict)
    _WRAPPED[cls] = wrapped
    return wrapped


def _get_model_with_jpq(original: Any) -> Any:
    def get_model(model_name: str) -> type:
        mmrec_compat.check_importable(model_name)
        return _wrap_model_class(original(model_name))

    get_model._urecjpq_original = original  # type: ignore[attr-defined]
    return get_model


def _grid_scalars_as_lists(config: Any) -> None:
    """``--reg_weight=0`` for a grid-searched key: MMRec needs a list to take the product over."""
    for key in config["hyper_parameters"] or []:
        value = config[key]
        if value is not None and not isinstance(value, (list, tuple)):
            config[key] = [value]


def _config_class(original: type) -> type:
    if getattr(original, "_urecjpq_wrapped", False):
        return original

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original.__init__(self, *args, **kwargs)
        _grid_scalars_as_lists(self)

    return type("Config", (original,), {"__init__": __init__, "__module__": original.__module__, "_urecjpq_wrapped": True})


def checkpoint_tag(config: Any) -> str:
    if not jpq_enabled(config):
        return "base"
    targets = JPQConfig.from_mapping(config).targets
    return "jpq" if set(targets) == {"user", "item"} else "jpq-" + "-".join(targets)


def checkpoint_path(config: Any) -> str:
    folder = str(config["checkpoint_dir"] or "saved")
    return os.path.join(folder, f"{config['model']}-{config['dataset']}-{checkpoint_tag(config)}.pth")


def _plain(value: Any) -> Any:
    """Config values as plain Python (checkpoints load with ``weights_only=True``)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _snapshot(model: nn.Module) -> dict:
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    caches = {
        a: getattr(model, a).detach().to("cpu", copy=True)
        for a in CACHE_ATTRS
        if isinstance(getattr(model, a, None), torch.Tensor) and a not in model._parameters
    }
    return {"state_dict": state, "caches": caches}


def _wrap_trainer(cls: type) -> type:
    if getattr(cls, "_urecjpq_wrapped", False):
        return cls

    def get_best(self: Any) -> Any:
        return self.__dict__.get("_urecjpq_best_valid_result")

    def set_best(self: Any, value: Any) -> None:
        # Trainer.fit assigns best_valid_result exactly when validation improves: keep that state.
        self.__dict__["_urecjpq_best_valid_result"] = value
        if self.__dict__.get("_urecjpq_ready"):
            self._urecjpq_best = _snapshot(self.model)

    def __init__(self: Any, config: Any, model: nn.Module, mg: bool = False) -> None:
        self._urecjpq_best = None
        self._urecjpq_epoch_seconds = []
        cls.__init__(self, config, model, mg)
        self._urecjpq_ready = True

    def _train_epoch(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = cls._train_epoch(self, *args, **kwargs)
        self._urecjpq_epoch_seconds.append(time.perf_counter() - start)
        return out

    def fit(self: Any, train_data: Any, valid_data: Any = None, test_data: Any = None, saved: bool = False, verbose: bool = True):
        out = cls.fit(self, train_data, valid_data=valid_data, test_data=test_data, saved=saved, verbose=verbose)
        _record_run(self, out, saved)
        return out

    return type(
        cls.__name__,
        (cls,),
        {
            "__init__": __init__,
            "_train_epoch": _train_epoch,
            "fit": fit,
            "best_valid_result": property(get_best, set_best),
            "__module__": cls.__module__,
            "_urecjpq_wrapped": True,
        },
    )


def _record_run(trainer: Any, fit_result: Any, saved: bool) -> None:
    config, model = trainer.config, trainer.model
    best_score, best_valid, best_test = fit_result
    n_users, n_items = model.n_users, model.n_items
    id_params, feature_params = table_parameters(model, n_users, n_items)
    seconds = trainer._urecjpq_epoch_seconds
    record = {
        "model": config["model"],
        "dataset": config["dataset"],
        "jpq": jpq_enabled(config),
        "hyper": {k: _plain(config[k]) for k in config["hyper_parameters"] or []},
        "best_valid_score": float(best_score),
        "valid_result": {k: float(v) for k, v in dict(best_valid).items()},
        "test_result": {k: float(v) for k, v in dict(best_test).items()},
        "trainable_params": count_trainable(model),
        "id_table_params": id_params,
        "feature_params": feature_params,
        "epochs_run": len(seconds),
        "seconds_per_epoch": float(np.mean(seconds)) if seconds else 0.0,
        "checkpoint": None,
        "checkpoint_bytes": 0,
    }
    path = checkpoint_path(config)
    if saved and trainer._urecjpq_best is not None and best_score > _SAVED_BEST.get(path, -float("inf")):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        payload = {
            **trainer._urecjpq_best,
            "config": {k: _plain(v) for k, v in config.final_config_dict.items()},
            "valid_result": record["valid_result"],
            "test_result": record["test_result"],
            "urecjpq": {"tag": checkpoint_tag(config), "hyper": record["hyper"]},
        }
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(payload, tmp)
        os.replace(tmp, path)
        _SAVED_BEST[path] = best_score
        getLogger().info(f"urecjpq: saved the best model of this run to {path} ({os.path.getsize(path):,} bytes)")
    if os.path.isfile(path) and path in _SAVED_BEST:
        record["checkpoint"] = path
        record["checkpoint_bytes"] = os.path.getsize(path)
    RUNS.append(record)


def activate() -> None:
    """Install the hook (idempotent); MMRec's ``src`` must be importable. Then ``jpq: true`` compresses."""
    global _ACTIVE
    if _ACTIVE:
        return
    mmrec_compat.install()
    import utils.quick_start as quick_start
    import utils.utils as mmrec_utils

    hooked = _get_model_with_jpq(getattr(mmrec_utils.get_model, "_urecjpq_original", mmrec_utils.get_model))
    quick_start.get_model = hooked
    mmrec_utils.get_model = hooked
    trainer = _wrap_trainer(mmrec_utils.get_trainer())
    quick_start.get_trainer = lambda: trainer
    quick_start.Config = _config_class(quick_start.Config)
    _ACTIVE = True


def is_active() -> bool:
    return _ACTIVE


def activate_main(rest: list[str], jpq: bool = False) -> dict:
    """The patched ``main.py``'s one line: activate, and turn its leftover ``--key=value`` args into config.

    Returns the entries to merge into ``main.py``'s ``config_dict``; bad arguments exit with one line.
    """
    from .mmrec_cli import overrides_from_argv

    try:
        overrides = overrides_from_argv(rest)
        if jpq:
            overrides["jpq"] = True
        if jpq_enabled(overrides):
            JPQConfig.from_mapping(overrides)
    except URecJPQError as err:
        raise SystemExit(f"main.py: error: {err}") from None
    activate()
    return base_config_dict(overrides)


# -- running ----------------------------------------------------------------------------------
def use_mmrec_src(mmrec_src: str) -> str:
    """Make MMRec's ``src`` importable and the working directory (its ``Config`` reads ``./configs``)."""
    src = os.path.abspath(mmrec_src)
    if not (os.path.isfile(os.path.join(src, "main.py")) and os.path.isdir(os.path.join(src, "configs"))):
        raise URecJPQError(f"mmrec_src={mmrec_src!r} is not MMRec's src/ (it needs main.py and configs/)")
    os.chdir(src)
    if src not in sys.path:
        sys.path.insert(0, src)
    return src


def evaluate_checkpoint(path: str, config_overrides: Mapping[str, Any] | None = None) -> dict:
    """Rebuild the saved model (MMRec's data pipeline, same config), load its state, evaluate valid and test.

    The working directory must be MMRec's ``src`` (see :func:`use_mmrec_src`).
    """
    from ..checkpoint_file import read_checkpoint_file

    checkpoint = read_checkpoint_file(path, needs=("state_dict", "config"), weights_only=True,
                                      written_by="urecjpq-mmrec")
    activate()
    from utils.configurator import Config
    from utils.dataloader import EvalDataLoader, TrainDataLoader
    from utils.dataset import RecDataset
    from utils.logger import init_logger
    from utils.utils import get_model, get_trainer, init_seed

    saved = dict(checkpoint["config"])
    saved.pop("device", None)
    saved.update(config_overrides or {})
    config = Config(saved["model"], saved["dataset"], saved)
    init_logger(config)
    dataset = RecDataset(config)
    train, valid, test = dataset.split()
    for part in (dataset, train, valid, test):
        getLogger().info(str(part))  # MMRec's __str__ also sets inter_num, which its loaders read
    train_data = TrainDataLoader(config, train, batch_size=config["train_batch_size"], shuffle=True)
    valid_data = EvalDataLoader(config, valid, additional_dataset=train, batch_size=config["eval_batch_size"])
    test_data = EvalDataLoader(config, test, additional_dataset=train, batch_size=config["eval_batch_size"])
    init_seed(config["seed"])
    train_data.pretrain_setup()
    _LOADING["placeholder"] = True
    try:
        model = get_model(config["model"])(config, train_data).to(config["device"])
    finally:
        _LOADING["placeholder"] = False
    model.load_state_dict(checkpoint["state_dict"])
    for name, value in checkpoint.get("caches", {}).items():
        setattr(model, name, value.to(config["device"]))
    trainer = get_trainer()(config, model)
    result = {
        "valid_result": {k: float(v) for k, v in trainer.evaluate(valid_data).items()},
        "test_result": {k: float(v) for k, v in trainer.evaluate(test_data).items()},
    }
    getLogger().info(f"urecjpq: evaluated {path}: test {result['test_result']}")
    return result


def base_config_dict(overrides: Mapping[str, Any]) -> dict:
    """The config_dict the launcher gives ``quick_start``: CPU when there is no GPU, then the overrides."""
    config = {"gpu_id": 0}
    if not torch.cuda.is_available():
        config["use_gpu"] = False
    config.update(overrides)
    if isinstance(config.get("data_path"), str) and not config["data_path"].endswith(("/", os.sep)):
        config["data_path"] += os.sep  # MMRec concatenates data_path + dataset
    return config


def dataset_yaml_fallback(dataset: str, config_dict: Mapping[str, Any]) -> dict:
    """Keys of ``<data_path>/<dataset>.yaml`` when MMRec's ``configs/dataset/`` lacks that dataset.

    MMRec reads dataset configs only from ``./configs/dataset/``; this lets a dataset built by
    ``urecjpq mmrec-data`` run without adding a file to the MMRec checkout.
    """
    if os.path.isfile(os.path.join("configs", "dataset", f"{dataset}.yaml")):
        return {}
    data_path = config_dict.get("data_path")
    candidate = os.path.join(str(data_path), f"{dataset}.yaml") if data_path else None
    if not candidate or not os.path.isfile(candidate):
        return {}
    import yaml

    with open(candidate, encoding="utf-8") as fh:
        return dict(yaml.safe_load(fh) or {})


def run_one(model: str, dataset: str, overrides: dict, out_dir: str, mmrec_src: str) -> dict:
    """Train one model with MMRec's ``quick_start`` (plugin active) and return the benchmark record.

    Returns ``{"test_result", "trainable_params", "id_table_params", "feature_params",
    "checkpoint_bytes", "epochs_run", "seconds_per_epoch"}`` for the best grid combination (by
    validation score); the checkpoint goes to ``out_dir``. Runs in-process (changes the working
    directory to ``mmrec_src``); the benchmark calls it in a subprocess.
    """
    out_dir = os.path.abspath(out_dir)
    use_mmrec_src(mmrec_src)
    activate()
    from utils.quick_start import quick_start

    config = base_config_dict({"checkpoint_dir": out_dir, **overrides})
    config = {**dataset_yaml_fallback(dataset, config), **config}
    first = len(RUNS)
    quick_start(model=model, dataset=dataset, config_dict=config, save_model=True)
    runs = RUNS[first:]
    if not runs:
        raise URecJPQError(f"MMRec trained no model for {model} on {dataset}")
    best = max(runs, key=lambda r: r["best_valid_score"])
    saved = [r for r in runs if r["checkpoint"]]
    return {
        "test_result": best["test_result"],
        "trainable_params": best["trainable_params"],
        "id_table_params": best["id_table_params"],
        "feature_params": best["feature_params"],
        "checkpoint_bytes": saved[-1]["checkpoint_bytes"] if saved else 0,
        "epochs_run": best["epochs_run"],
        "seconds_per_epoch": best["seconds_per_epoch"],
    }

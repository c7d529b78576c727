"""MMRec host: every model built by MMRec's ``quick_start`` gets JPQ tables when the config says ``jpq: true``.

``activate()`` replaces the names ``quick_start`` bound by from-import (``get_model``,
``get_trainer``, ``Config``) in ``utils.quick_start`` (and ``get_model`` in ``utils.utils``);
``deactivate()`` puts them back:

- ``get_model(name)`` returns a thin subclass (:func:`~urecjpq_plugin.hosts.base.wrap_model_class`)
  whose ``__init__`` runs MMRec's, then swaps the tables (:func:`compress_model`) before any trainer
  or optimizer exists, so every combination of MMRec's grid search is compressed;
- ``get_trainer()`` returns the Trainer subclass of :mod:`.runner` (best state saved, runs recorded);
- ``Config`` wraps a scalar given for a grid-searched key into a one-element list.

Which tables: the registry, YAML ``jpq_tables``, then :data:`~.tables.TABLE_SPECS`, then the
core rule. GRCN's users-then-items table becomes one :class:`JPQEmbedding` with ``2 * ksub`` sub-ids
per split, codes ``cat(user_codes, item_codes + ksub)``, so users and items keep separate codebook halves.

MMRec is imported lazily: its ``src`` must be on ``sys.path`` (and the working directory, since
its ``Config`` reads ``./configs``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from logging import getLogger
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from urecjpq_plugin.apply import JPQCheckpointError, building_for_load, is_building_for_load
from urecjpq_plugin.assign import assign_codes, resolve_auto
from urecjpq_plugin.config import AUTO, JPQConfig, JPQConfigError, URecJPQError, jpq_enabled
from urecjpq_plugin.features import FeatureSwap, check_feature_dim, pq_feature_table
from urecjpq_plugin.fit_codes import FIT_MAX_PAIRS
from urecjpq_plugin.inject import JPQTargetError, SwapRecord, TableRef, _resolve, _table_of, count_trainable, build_jpq_tables, swap_all
from urecjpq_plugin.jpq import JPQEmbedding
from urecjpq_plugin.hosts.mmrec import compat as mmrec_compat
from urecjpq_plugin.hosts.mmrec import runner as mmrec_run
from urecjpq_plugin.hosts.base import (Patches, check_state_matches, codes_source, hooked_get_model, log_swaps, model_is,
                   row_scales_source, unit_rows_for_model, wrap_model_class)
from urecjpq_plugin.hosts.full_sort import route_full_sort
from urecjpq_plugin.hosts.mmrec.args import overrides_from_argv
from urecjpq_plugin.hosts.mmrec.runner import base_config_dict, use_mmrec_src
from urecjpq_plugin.hosts.mmrec.tables import (
    FEATURE_TABLES,
    UNTRAINED_TABLES,
    class_key,
    entity_counts,
    feature_tables,
    id_table_refs,
)

__all__ = [
    "JPQCheckpointError", "activate", "activate_main", "check_state_matches", "compress_model", "compute_codes",
    "deactivate", "evaluate_checkpoint", "is_active", "load_data", "run_one",
]

_WRAPPED: dict[type, type] = {}
_PATCHES = Patches()


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


def compute_codes(jcfg: JPQConfig, dataloader: Any, model: nn.Module, config: Any,
                  interactions: Any = None) -> dict[str, torch.Tensor]:
    """User/item codes from the training split (``dataloader`` is MMRec's train loader; ``interactions()``:
    its training matrix when the caller already builds it)."""
    matrix = interactions() if interactions is not None else dataloader.inter_matrix(form="csr")
    inter = matrix.astype(np.float32)
    features = load_item_features(model, config) if jcfg.code_assign.startswith("features") else None
    return assign_codes(jcfg, inter, item_features=features, host="the MMRec host")


def _joint_codes(codes: Mapping[str, torch.Tensor], ksub: int) -> torch.Tensor:
    """Users then items in one table, items shifted to the upper half of a ``2 * ksub`` codebook."""
    return torch.cat([codes["user"].long(), codes["item"].long() + ksub], dim=0)


# -- compression ----------------------------------------------------------------------------------
# MMRec model class -> (query vectors, raw item table) where its full_sort_predict is
# ``query @ <item table>.weight.T`` (read from MMRec's source; the others score propagated or
# feature-fused item representations, which are not the compressed table).
# jpq_degree_scale: auto applies to these (scores from dot products of the rows or of their linear
# propagation; see hosts.recbole.hook.DEGREE_SCALE_MODELS for what was measured). MGCN (a LightGCN view
# plus item-ID rows gated by features) on TikTok, 3 seeds: recall@20 -29.0 % unscaled, -21.7 % scaled.
# FREEDOM (3 seeds: -7.7 % unscaled, -8.3 % scaled) and BM3 (5 seeds: -6.3 %, -6.4 %) gain nothing from it.
DEGREE_SCALE_MODELS = ("BPR", "LightGCN", "MGCN")
# jpq_unit_rows: auto turns unit rows on for these models on sparse data. TikTok, 3 seeds, recall@20 vs
# uncompressed, without -> with: BPR +15.9 % -> +19.6 %, LightGCN -4.2 % -> -2.5 %; MGCN (seed 999) -17.8 % ->
# -22.6 %, so it is left out; FREEDOM -7.7 % -> -7.3 % (NDCG@20 -5.0 % -> -7.3 %) and BM3 -8.3 % -> -7.3 %, within
# their seeds' spread, left out too (docs/benchmarks.md, "MMRec on TikTok"; RecBole's: hosts.recbole.hook).
UNIT_ROW_MODELS = ("BPR", "LightGCN")
# jpq_code_assign: auto gives these models lightgcn_fit codes where it would give svd_pq_cos (sparse data). BM3 on
# TikTok, 5 seeds, recall@20 / NDCG@20 vs uncompressed: svd_pq_cos -6.3 % / +12.8 %, lightgcn_fit -1.0 % / +19.9 %,
# higher recall at every seed; FREEDOM (3 seeds) lost with it, -7.7 % -> -10.1 %, so it keeps svd_pq_cos, as every
# model not measured does (docs/benchmarks.md, "Seventeenth round").
FIT_CODE_MODELS = ("BM3",)


def auto_codes_for_model(jcfg: JPQConfig, model: nn.Module, interactions: Callable[[], Any]) -> JPQConfig:
    """``jpq_code_assign: auto`` resolved here for :data:`FIT_CODE_MODELS` on sparse data (``lightgcn_fit``);
    every other model, dense data and any explicit assignment are left to :func:`assign_codes`."""
    if (jcfg.code_assign != AUTO or jcfg.codes_from is not None or not model_is(model, FIT_CODE_MODELS)
            or is_building_for_load() or resolve_auto(interactions()) == "svd"):
        return jcfg
    if interactions().nnz > FIT_MAX_PAIRS:  # the fit's cost grows with the square of the pairs: keep the SVD codes
        getLogger().info(f"urecjpq: {type(model).__name__} keeps svd_pq_cos codes: {interactions().nnz:,} training pairs, "
                         f"more than lightgcn_fit's {FIT_MAX_PAIRS:,}")
        return jcfg
    getLogger().info(f"urecjpq: jpq_code_assign=auto -> lightgcn_fit ({type(model).__name__} on sparse data)")
    return replace(jcfg, code_assign="lightgcn_fit")


def _bpr_query(model: nn.Module, interaction: Any) -> torch.Tensor:
    return model.get_user_embedding(interaction[0])


PQ_FULL_SORT = {"BPR": (_bpr_query, "item_embedding")}


def compress_model(model: nn.Module, config: Any, dataloader: Any) -> dict:
    """Swap ``model``'s ID (and requested feature) tables; every check runs before any change.

    Inside :func:`~urecjpq_plugin.apply.building_for_load` the compressed structure gets zero codes
    and untrained feature codebooks (no SVD/k-means): the checkpoint's state brings the real ones.
    """
    jcfg = JPQConfig.from_mapping(config)
    key, name = class_key(model), type(model).__name__
    if jcfg.id_targets and key in UNTRAINED_TABLES:
        raise JPQTargetError(
            f"{name} keeps {UNTRAINED_TABLES[key]} as plain tensors that MMRec never trains (not nn.Parameter), "
            "so JPQ has nothing to compress; run it without --jpq"
        )
    n_users = dataloader.dataset.get_user_num()
    n_items = dataloader.dataset.get_item_num()
    counts = entity_counts(n_users, n_items)
    refs = id_table_refs(model, counts, jcfg.id_targets, config)[0] if jcfg.id_targets else []
    tables = feature_tables(model)
    wanted_features = {t: tables[t] for t in jcfg.feature_targets if t in tables}
    for target in jcfg.feature_targets:
        if target not in tables:
            getLogger().warning(
                f"urecjpq: jpq_targets includes {target}, but {name} has no {FEATURE_TABLES[target]} table "
                "(it uses the raw features without a fine-tuned table); nothing to compress there"
            )
    # jpq_M: auto -> from the ID tables' width; feature tables share that M.
    jcfg = jcfg.for_dims([r.shape[1] for r in refs] or [m.weight.shape[1] for m in wanted_features.values()])
    for ref in refs:
        if ref.entity == "user_item" and not jcfg.same_for("user", "item"):
            raise JPQConfigError(f"{name} keeps users and items in one table ({ref.path}), so jpq_table_overrides "
                                 "must give user and item the same M and ksub")
        jcfg.for_table("user" if ref.entity == "user_item" else ref.entity).check_dim(ref.shape[1], table=ref.path)
    for target, module in wanted_features.items():
        check_feature_dim(module.weight.shape[1], jcfg.for_table(target).M, FEATURE_TABLES[target])

    before = count_trainable(model)
    training_matrix = functools.cache(lambda: dataloader.inter_matrix(form="csr"))  # codes and degree scales share it
    jcfg = auto_codes_for_model(jcfg, model, training_matrix)
    codes_for = codes_source(jcfg, counts, lambda: compute_codes(jcfg, dataloader, model, config, training_matrix),
                             refs)
    scales = row_scales_source(jcfg, training_matrix, model, DEGREE_SCALE_MODELS)
    jcfg = unit_rows_for_model(jcfg, training_matrix, model, UNIT_ROW_MODELS)
    # validate all, build all (ID tables, GRCN's joint table, feature tables), then swap all
    built = build_jpq_tables(model, [r for r in refs if r.entity != "user_item"], codes_for, jcfg, scales)
    built += [_joint_table(model, ref, codes_for, jcfg, scales) for ref in refs if ref.entity == "user_item"]
    features = []
    for target, module in wanted_features.items():
        table_config = jcfg.for_table(target)
        new, swap = pq_feature_table(module.weight, table_config.M, table_config.ksub, jcfg.seed, FEATURE_TABLES[target],
                                     is_building_for_load())
        features.append((TableRef(FEATURE_TABLES[target], target, "embedding", tuple(module.weight.shape)), new, swap))
    records = swap_all(model, built)
    swaps: list[FeatureSwap] = swap_all(model, features)
    route_full_sort(model, PQ_FULL_SORT, "models.")  # MMRec returns [B, N] scores
    log_swaps(records, jcfg, before, count_trainable(model), [f"urecjpq: JPQ feature table {s.describe()}" for s in swaps])
    summary = {"records": records, "features": swaps}
    model._urecjpq_summary = summary
    return summary


def _joint_table(model: nn.Module, ref: TableRef, codes_for: Any, jcfg: JPQConfig, row_scales: Any) -> tuple:
    """GRCN's users-then-items table: one JPQEmbedding over a ``2 * ksub`` codebook (not yet swapped in)."""
    table, padding_idx = _table_of(*_resolve(model, ref.path), ref.kind)
    ksub = jcfg.for_table("user").ksub  # the same for items (checked before any build)
    codes = _joint_codes({"user": codes_for("user"), "item": codes_for("item")}, ksub)
    new = JPQEmbedding.from_table(table, codes.to(table.device), 2 * ksub, padding_idx, jcfg.split_dropout)
    scales = row_scales()
    if scales:
        new.set_row_scale(torch.cat([scales["user"], scales["item"]]))
    if jcfg.unit_rows is True:
        new.set_unit_rows()
    return ref, new, SwapRecord.of(ref, "user+item", table, new)


# -- the hook -------------------------------------------------------------------------------------
def _wrap_model_class(cls: type) -> type:
    return wrap_model_class(cls, compress_model, _WRAPPED, before_init=lambda c, config, data: mmrec_compat.before_init(
        c.__name__, config, data), after_init=mmrec_compat.after_init, rewrap=_wrap_model_class)


def activate() -> None:
    """Install the hook (idempotent); MMRec's ``src`` must be importable. Then ``jpq: true`` compresses."""
    if _PATCHES.active:
        return
    mmrec_compat.install()
    import utils.quick_start as quick_start
    import utils.utils as mmrec_utils

    hooked = hooked_get_model(mmrec_utils.get_model, _wrap_model_class, before=mmrec_compat.check_importable)
    _PATCHES.set(quick_start, "get_model", hooked)
    _PATCHES.set(mmrec_utils, "get_model", hooked)
    trainer = mmrec_run._wrap_trainer(mmrec_utils.get_trainer())
    _PATCHES.set(quick_start, "get_trainer", lambda: trainer)
    _PATCHES.set(quick_start, "Config", mmrec_run._config_class(quick_start.Config))
    _PATCHES.active = True


def deactivate() -> None:
    """Undo :func:`activate`: MMRec's ``get_model``, ``get_trainer`` and ``Config`` bindings are restored and
    the compatibility shims taken out."""
    _PATCHES.undo()
    mmrec_compat.uninstall()


def is_active() -> bool:
    return _PATCHES.active


def activate_main(rest: list[str], jpq: bool = False) -> dict:
    """The patched ``main.py``'s one line: activate, and turn its leftover ``--key=value`` args into config.

    Returns the entries to merge into ``main.py``'s ``config_dict``; bad arguments exit with one line.
    """
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
def evaluate_checkpoint(path: str, config_overrides: Mapping[str, Any] | None = None) -> dict:
    """Rebuild the saved model (MMRec's data pipeline, same config), load its state, evaluate valid and test.

    The working directory must be MMRec's ``src`` (see :func:`use_mmrec_src`).
    """
    from urecjpq_plugin.checkpoint_file import read_checkpoint_file

    checkpoint = read_checkpoint_file(path, needs=("state_dict", "config"), weights_only=True,
                                      written_by="urecjpq-mmrec")
    activate()
    from utils.configurator import Config
    from utils.utils import get_model, get_trainer

    saved = dict(checkpoint["config"])
    saved.pop("device", None)
    saved.update(config_overrides or {})
    config = Config(saved["model"], saved["dataset"], saved)
    train_data, valid_data, test_data = load_data(config)
    with building_for_load():  # placeholder codes: the checkpoint brings the real ones
        model = get_model(config["model"])(config, train_data).to(config["device"])
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


def load_data(config: Any) -> tuple:
    """MMRec's data pipeline for ``config`` (as its quick_start builds it): train, valid and test loaders."""
    from utils.dataloader import EvalDataLoader, TrainDataLoader
    from utils.dataset import RecDataset
    from utils.logger import init_logger
    from utils.utils import init_seed

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
    return train_data, valid_data, test_data


def run_one(model: str, dataset: str, overrides: dict, out_dir: str, mmrec_src: str) -> dict:
    """Train one model with MMRec's ``quick_start`` (plugin active) and return the benchmark record.

    Returns ``{"test_result", "trainable_params", "id_table_params", "feature_params", "jpq_tables",
    "checkpoint_bytes", "epochs_run", "seconds_per_epoch", "cpu_seconds_per_epoch", "cpu_seconds_per_eval",
    "loss_nan_epoch", "hyper", "model"}``
    (``jpq_tables``: ``{path: {"M", "ksub"}}`` of the compressed tables; ``cpu_*``: median CPU seconds of this
    process per training epoch and per evaluation, valid or test) for one point of MMRec's grid, the first value
    of each list (:func:`~.runner.first_grid_point`; ``overrides`` may set others); the checkpoint goes
    to ``out_dir``. Runs in-process (changes the working
    directory to ``mmrec_src``); the benchmark calls it in a subprocess.
    """
    out_dir = os.path.abspath(out_dir)
    use_mmrec_src(mmrec_src)
    activate()
    from utils.quick_start import quick_start

    mmrec_run.check_model_name(model)
    config = {**mmrec_run.first_grid_point(model), **mmrec_run.launch_config(dataset, {"checkpoint_dir": out_dir, **overrides})}
    first = len(mmrec_run.RUNS)
    quick_start(model=model, dataset=dataset, config_dict=config, save_model=True)
    runs = mmrec_run.RUNS[first:]
    if not runs:
        raise URecJPQError(f"MMRec trained no model for {model} on {dataset}")
    return bench_record(runs)


# What run_one passes on from the runner's records; ``loss_nan_epoch`` and ``hyper`` let the bench refuse a run that
# MMRec stopped at a NaN loss (its all-zero metrics are not a result) and name the grid point.
RUN_RECORD_KEYS = ("test_result", "trainable_params", "id_table_params", "feature_params", "jpq_tables", "epochs_run",
                   "seconds_per_epoch", "cpu_seconds_per_epoch", "cpu_seconds_per_eval", "loss_nan_epoch", "hyper",
                   "model")


def bench_record(runs: list) -> dict:
    """The record of the best-validating run among one ``quick_start``'s grid points, with the checkpoint bytes of
    the last saved one."""
    best = max(runs, key=lambda r: r["best_valid_score"])
    saved = [r for r in runs if r["checkpoint"]]
    kept = best if best["checkpoint"] else (saved[-1] if saved else None)
    return {**{k: best[k] for k in RUN_RECORD_KEYS}, "checkpoint": kept["checkpoint"] if kept else None,
            "checkpoint_bytes": kept["checkpoint_bytes"] if kept else 0}

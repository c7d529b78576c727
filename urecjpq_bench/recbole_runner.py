"""RecBole runner for the bench: one ``run_recbole``-equivalent training, with the bench's measurements.

Same steps as ``recbole.quick_start.run_recbole`` (config, seed, dataset, model, trainer.fit,
evaluate the best checkpoint on test), kept explicit so the trainer is at hand to count epochs,
time them, and size the checkpoint it saved.
"""

from __future__ import annotations

import os
import time
from typing import Any

from torch import nn

from urecjpq_plugin.inject import JPQTargetError, count_trainable, find_id_tables, jpq_modules, table_settings

BENCH_DEFAULTS = {"show_progress": False, "topk": [10, 20]}


def id_table_params(model: nn.Module, counts: dict) -> int:
    """Trainable parameters in the user/item tables: JPQ codebooks plus any table left uncompressed."""
    total = sum(m.sub_embeddings.numel() for m in jpq_modules(model).values() if m.sub_embeddings.requires_grad)
    try:
        refs = find_id_tables(model, counts, ("user", "item"))
    except JPQTargetError:  # every table is compressed (or the model has none)
        refs = []
    for ref in refs:
        table = model.get_submodule(ref.path).weight if ref.kind == "embedding" else model.get_parameter(ref.path)
        total += table.numel() if table.requires_grad else 0
    return total


def distinct_codes(modules: dict[str, nn.Module]) -> dict[str, float]:
    """Per compressed table (``jpq_modules(model)``): the fraction of IDs whose whole code no other ID shares."""
    import torch

    return {path: torch.unique(m.codes.long(), dim=0).shape[0] / max(m.codes.shape[0], 1) for path, m in modules.items()}


def _by_entity(fractions: dict[str, float], refs_rows: dict[str, int], counts: dict) -> dict[str, float]:
    """``{"user": f, "item": f}``: the lowest fraction among the tables of each ID space."""
    out: dict[str, float] = {}
    for path, fraction in fractions.items():
        for entity, n in counts.items():
            if refs_rows.get(path) == n:
                out[entity] = min(out.get(entity, 1.0), fraction)
    return out


def _timed_epochs(trainer: Any) -> list[float]:
    """Wrap ``trainer._train_epoch`` to record each training epoch's seconds (evaluation excluded)."""
    seconds: list[float] = []
    train_epoch = trainer._train_epoch

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return train_epoch(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    trainer._train_epoch = timed
    return seconds


def build_trainer(model: str, dataset: str, config_dict: dict) -> tuple:
    """``run_recbole``'s steps up to the trainer, plugin active (RecBole's shipped ml-100k when there is
    no local copy): ``(config, dataset, trainer, (train, valid, test))``."""
    from urecjpq_plugin.hosts.recbole.hook import activate
    from urecjpq_plugin.hosts.recbole.cli import shipped_data_path

    activate()
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    config_dict = dict(config_dict)
    if "data_path" not in config_dict and not os.path.isdir(os.path.join("dataset", dataset)):
        shipped = shipped_data_path(dataset)
        if shipped:
            config_dict["data_path"] = shipped
    config = Config(model=model, dataset=dataset, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    data = create_dataset(config)
    splits = data_preparation(config, data)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = get_model(config["model"])(config, splits[0]._dataset).to(config["device"])
    return config, data, get_trainer(config["MODEL_TYPE"], config["model"])(config, net), splits


def run_one(model: str, dataset: str, overrides: dict, out_dir: str, **options: Any) -> dict:
    """Train ``model`` on ``dataset`` with RecBole (plugin active), test the best checkpoint; see :mod:`.hosts`."""
    config, data, trainer, (train_data, valid_data, test_data) = build_trainer(model, dataset, {
        **BENCH_DEFAULTS, "checkpoint_dir": os.path.join(out_dir, "saved"), **overrides})
    net = trainer.model
    epoch_seconds = _timed_epochs(trainer)
    best_valid, valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)

    counts = {"user": data.user_num, "item": data.item_num}
    ckpt = trainer.saved_model_file
    from urecjpq_plugin.hosts.recbole.context import id_row_params, is_context_model

    # context-aware models keep user/item rows inside shared token tables (all fields in one table)
    id_params = id_row_params(net, config) if is_context_model(net) else id_table_params(net, counts)
    modules = jpq_modules(net)
    rows = {path: m.num_embeddings for path, m in modules.items()}
    return {
        "distinct_codes": _by_entity(distinct_codes(modules), rows, counts),
        # what jpq_M / jpq_ksub "auto" resolved to, per compressed table
        "jpq_tables": table_settings(modules),
        "metrics": {k: float(v) for k, v in test_result.items()},
        "valid_metrics": {k: float(v) for k, v in valid_result.items()},
        "valid_metric": config["valid_metric"],
        "epochs": len(epoch_seconds),
        "seconds_per_epoch": sum(epoch_seconds) / max(len(epoch_seconds), 1),
        "params": {"id_tables": id_params, "features": 0, "total": count_trainable(net)},
        "checkpoint": os.path.abspath(ckpt) if os.path.exists(ckpt) else None,
        "checkpoint_bytes": os.path.getsize(ckpt) if os.path.exists(ckpt) else 0,
        "state_dict_bytes": sum(t.numel() * t.element_size() for t in net.state_dict().values()),
        "n_users": int(data.user_num),
        "n_items": int(data.item_num),
        "n_interactions": int(data.inter_num),
    }

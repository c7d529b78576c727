"""MMRec host: what a run leaves behind and how it is set up (no hook installed here).

- the Trainer subclass that keeps the best model's state (MMRec saves none), writes it to
  ``<checkpoint_dir>/<model>-<dataset>-<tag>.pth`` (state_dict + config) and records each
  ``fit`` in :data:`RUNS`;
- ``Config`` wrapped so a scalar given for a grid-searched key becomes a one-element list;
- MMRec's ``src`` as working directory, the launcher's base config, dataset YAML fallback.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import time
from logging import getLogger
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from urecjpq_plugin.config import JPQConfig, URecJPQError, jpq_enabled
from urecjpq_plugin.inject import count_trainable, jpq_modules, subclass_with, table_settings
from urecjpq_plugin.hosts.mmrec.args import yaml_number
from urecjpq_plugin.hosts.mmrec.tables import table_parameters

#: forward caches read by full_sort_predict; saved with the checkpoint so evaluation can reload
CACHE_ATTRS = ("result_embed", "result")
_SAVED_BEST: dict[str, float] = {}  # checkpoint path -> best valid score written in this process
RUNS: list[dict] = []  # one record per Trainer.fit (per grid combination)


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

    return subclass_with(original, __init__=__init__)


def checkpoint_tag(config: Any) -> str:
    if not jpq_enabled(config):
        return "base"
    targets = JPQConfig.from_mapping(config).targets
    return "jpq" if set(targets) == {"user", "item"} else "jpq-" + "-".join(targets)


def checkpoint_path(config: Any) -> str:
    folder = str(config["checkpoint_dir"] or "saved")
    return os.path.join(folder, f"{config['model']}-{config['dataset']}-{checkpoint_tag(config)}.pth")


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else 0.0


def _plain(value: Any) -> Any:
    """Config values as plain Python (checkpoints load with ``weights_only=True``)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def saved_config(config: Any) -> dict:
    """MMRec's final config as a checkpoint keeps it (plain values: read with ``weights_only=True``)."""
    return {k: _plain(v) for k, v in config.final_config_dict.items()}


def _snapshot(model: nn.Module) -> dict:
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    caches = {
        a: getattr(model, a).detach().to("cpu", copy=True)
        for a in CACHE_ATTRS
        if isinstance(getattr(model, a, None), torch.Tensor) and a not in model._parameters
    }
    return {"state_dict": state, "caches": caches}


def _loss_is_nan(epoch_result: Any) -> bool:
    """Whether ``Trainer._train_epoch`` ended on a NaN loss: MMRec then returns the loss *tensor* (sums are
    floats otherwise), logs "Loss is nan ... Exiting." and ``fit`` stops with whatever validated best."""
    loss = epoch_result[0] if isinstance(epoch_result, tuple) and epoch_result else epoch_result
    return torch.is_tensor(loss) and bool(torch.isnan(loss).any())


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
        # CPU seconds of this process too: unlike wall-clock they do not grow when other jobs share the cores
        self._urecjpq_epoch_cpu_seconds = []
        self._urecjpq_eval_cpu_seconds = []
        self._urecjpq_nan_epoch = None  # the epoch whose loss turned NaN (MMRec stops there)
        cls.__init__(self, config, model, mg)
        self._urecjpq_ready = True

    def _train_epoch(self: Any, *args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.process_time()
        out = cls._train_epoch(self, *args, **kwargs)
        self._urecjpq_epoch_seconds.append(time.perf_counter() - start)
        self._urecjpq_epoch_cpu_seconds.append(time.process_time() - cpu)
        if self._urecjpq_nan_epoch is None and _loss_is_nan(out):
            self._urecjpq_nan_epoch = len(self._urecjpq_epoch_seconds) - 1
        return out

    def evaluate(self: Any, *args: Any, **kwargs: Any) -> Any:
        cpu = time.process_time()
        out = cls.evaluate(self, *args, **kwargs)
        self._urecjpq_eval_cpu_seconds.append(time.process_time() - cpu)
        return out

    def fit(self: Any, train_data: Any, valid_data: Any = None, test_data: Any = None, saved: bool = False, verbose: bool = True):
        out = cls.fit(self, train_data, valid_data=valid_data, test_data=test_data, saved=saved, verbose=verbose)
        _record_run(self, out, saved)
        return out

    return subclass_with(cls, __init__=__init__, _train_epoch=_train_epoch, evaluate=evaluate, fit=fit,
                         best_valid_result=property(get_best, set_best))


def _record_run(trainer: Any, fit_result: Any, saved: bool) -> None:
    config, model = trainer.config, trainer.model
    best_score, best_valid, best_test = fit_result
    n_users, n_items = model.n_users, model.n_items
    id_params, feature_params = table_parameters(model, n_users, n_items, config)
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
        "jpq_tables": table_settings(jpq_modules(model)),
        "epochs_run": len(seconds),
        # MMRec stops at a NaN loss and reports the best validation so far (all zeros before any): not a result
        "loss_nan_epoch": trainer._urecjpq_nan_epoch,
        "seconds_per_epoch": float(np.mean(seconds)) if seconds else 0.0,
        # medians: robust to the odd epoch that waited for the cores
        "cpu_seconds_per_epoch": _median(trainer._urecjpq_epoch_cpu_seconds),
        "cpu_seconds_per_eval": _median(trainer._urecjpq_eval_cpu_seconds),
        "checkpoint": None,
        "checkpoint_bytes": 0,
    }
    path = checkpoint_path(config)
    if saved and trainer._urecjpq_best is not None and best_score > _SAVED_BEST.get(path, -float("inf")):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        payload = {
            **trainer._urecjpq_best,
            "config": saved_config(config),
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


def use_mmrec_src(mmrec_src: str) -> str:
    """Make MMRec's ``src`` importable and the working directory (its ``Config`` reads ``./configs``)."""
    src = os.path.abspath(mmrec_src)
    if not (os.path.isfile(os.path.join(src, "main.py")) and os.path.isdir(os.path.join(src, "configs"))):
        raise URecJPQError(f"mmrec_src={mmrec_src!r} is not MMRec's src/ (it needs main.py and configs/)")
    os.chdir(src)
    if src not in sys.path:
        sys.path.insert(0, src)
    return src


def base_config_dict(overrides: Mapping[str, Any]) -> dict:
    """The config_dict the launcher gives ``quick_start``: CPU when there is no GPU, then the overrides."""
    config = {"gpu_id": 0}
    if not torch.cuda.is_available():
        config["use_gpu"] = False
    config.update(overrides)
    if isinstance(config.get("data_path"), str) and not config["data_path"].endswith(("/", os.sep)):
        config["data_path"] += os.sep  # MMRec concatenates data_path + dataset
    return config


def launch_config(dataset: str, overrides: Mapping[str, Any]) -> dict:
    """:func:`base_config_dict` plus the dataset keys MMRec would lack (:func:`dataset_yaml_fallback`);
    the overrides win. A dataset MMRec cannot load stops here in one line (MMRec's own loader fails with a
    ``TypeError`` on a ``None`` file name)."""
    config = base_config_dict(overrides)
    fallback = dataset_yaml_fallback(dataset, config)
    if not (fallback or "inter_file_name" in config or os.path.isfile(_dataset_config(dataset))):
        where = config.get("data_path") or _overall_data_path()
        folder = os.path.join("configs", "dataset")
        known = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []
        raise URecJPQError(
            f"dataset {dataset!r} has no configs/dataset/{dataset}.yaml in MMRec's src/ ({', '.join(known) or 'none'} have one) "
            f"and no {os.path.join(str(where), dataset, dataset + '.inter')} in MMRec's format (userID, itemID, "
            f"x_label); pass --data_path=<folder holding {dataset}/>"
        )
    return {**fallback, **config}


def _overall_data_path() -> str:
    """MMRec's default ``data_path`` (``configs/overall.yaml``), as a path from its ``src/``."""
    import yaml

    with open(os.path.join("configs", "overall.yaml"), encoding="utf-8") as fh:
        return os.path.abspath(str((yaml.safe_load(fh) or {}).get("data_path") or "."))


def _model_class_in(file: str, name: str, flags: int = 0) -> str | None:
    """The name of a top-level ``class <name>`` in ``file`` (matched with ``flags``), read without importing it."""
    with open(file, encoding="utf-8") as fh:
        found = re.search(rf"^class ({re.escape(name)})\b", fh.read(), flags | re.MULTILINE)
    return found.group(1) if found else None


def mmrec_model_names() -> dict[str, str]:
    """``{lower-case name: class name}`` of the models in MMRec's ``models/`` (working directory: its ``src/``):
    ``models/<name>.py`` defining ``class <Name>``."""
    names = {}
    for file in sorted(os.listdir("models")):
        if file.endswith(".py") and not file.startswith("_"):
            found = _model_class_in(os.path.join("models", file), file[:-3], re.IGNORECASE)
            if found:
                names[file[:-3]] = found
    return names


def check_model_name(model: str) -> str:
    """``model`` unless MMRec's ``get_model`` cannot find it, which imports ``models/<model.lower()>.py`` and
    takes the class named exactly ``model`` (it fails with an ``UnboundLocalError`` or ``AttributeError``):
    then one line with the name MMRec uses or close names. A file whose classes this cannot read is left to MMRec."""
    file = os.path.join("models", f"{model.lower()}.py")
    if os.path.isfile(file):
        if _model_class_in(file, model) is None and (other := _model_class_in(file, model, re.IGNORECASE)):
            raise URecJPQError(f"model {model!r} is not an MMRec model; MMRec's name is {other!r}")
        return model
    names = mmrec_model_names()
    close = difflib.get_close_matches(model.lower(), list(names), n=4, cutoff=0.5)
    listed = ", ".join(names[c] for c in close) if close else ", ".join(names.values())
    raise URecJPQError(f"model {model!r} is not in MMRec's models/; {'close names' if close else 'its models'}: {listed}")


def first_grid_point(model: str) -> dict:
    """MMRec's grid (``hyper_parameters`` of ``configs/model/<model>.yaml``) pinned to each list's first value.

    ``quick_start`` trains every combination; the bench compares one setting per model, the first of MMRec's
    own lists (what MMRec's papers tune is not what compression changes). Read from the working directory,
    MMRec's ``src/``; a model without a YAML gets nothing pinned.
    """
    import yaml

    path = os.path.join("configs", "model", f"{model}.yaml")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        spec = yaml.safe_load(fh) or {}
    names = [n for n in spec.get("hyper_parameters") or [] if n != "seed"]
    return {n: [yaml_number(spec[n][0])] for n in names if isinstance(spec.get(n), list) and spec[n]}



# MMRec's own dataset config (configs/dataset/baby.yaml) minus the file name: what every dataset in
# MMRec's format (<name>/<name>.inter with userID, itemID, ..., x_label; image_feat.npy, text_feat.npy) needs.
MMREC_FORMAT_KEYS = {
    "USER_ID_FIELD": "userID", "ITEM_ID_FIELD": "itemID", "TIME_FIELD": "timestamp",
    "filter_out_cod_start_users": True, "vision_feature_file": "image_feat.npy",
    "text_feature_file": "text_feat.npy", "user_graph_dict_file": "user_graph_dict.npy", "field_separator": "\t",
}


def _dataset_config(dataset: str) -> str:
    """MMRec's own config of ``dataset`` (``configs/dataset/<dataset>.yaml``, from its ``src/``)."""
    return os.path.join("configs", "dataset", f"{dataset}.yaml")


def dataset_yaml_fallback(dataset: str, config_dict: Mapping[str, Any]) -> dict:
    """Dataset keys when MMRec's ``configs/dataset/`` lacks that dataset: ``<data_path>/<dataset>.yaml``,
    else MMRec's standard keys when ``<data_path>/<dataset>/<dataset>.inter`` is in MMRec's format.

    MMRec reads dataset configs only from ``./configs/dataset/`` (and fails with a ``TypeError`` deep in
    its loader without one); this lets a dataset built by ``urecjpq mmrec-data``, or any pre-split
    dataset in MMRec's format (TikTok, Amazon catalogues), run without adding a file to the checkout.
    """
    if os.path.isfile(_dataset_config(dataset)):
        return {}
    data_path = config_dict.get("data_path")
    if not data_path:
        return {}
    candidate = os.path.join(str(data_path), f"{dataset}.yaml")
    if os.path.isfile(candidate):
        import yaml

        with open(candidate, encoding="utf-8") as fh:
            return dict(yaml.safe_load(fh) or {})
    inter = os.path.join(str(data_path), dataset, f"{dataset}.inter")
    if os.path.isfile(inter):
        with open(inter, encoding="utf-8") as fh:
            header = fh.readline().rstrip("\n").split("\t")
        if {"userID", "itemID", "x_label"} <= set(header):
            return {**MMREC_FORMAT_KEYS, "inter_file_name": f"{dataset}.inter"}
    return {}

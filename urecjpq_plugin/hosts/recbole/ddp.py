"""RecBole's multi-process training (``nproc`` / ``world_size``) with the plugin active in every rank.

RecBole's ``run`` spawns ranks with ``mp.spawn(run_recboles, ...)``. Spawned processes start fresh,
so in-process hooks of the parent (``activate()``) are not in them; :func:`run_distributed` spawns
:func:`_worker` instead, which activates the plugin and installs the patches below before calling
RecBole's own ``run_recbole``. Nothing of RecBole is edited on disk.

In every rank:

- JPQ codes are made identical by construction, as for any DDP user (:mod:`urecjpq_plugin.distributed`):
  each rank builds its model (and codes) as usual, then rank 0's codes and sub-embeddings are
  broadcast and checked by digest, and DDP is told to ignore the fixed buffers.
- Sub-embeddings are ordinary Parameters: DDP all-reduces their gradients like any other.
- Only rank 0 writes logs, tensorboard files and checkpoints; every rank loads rank 0's checkpoint
  for the final test (RecBole names it by each rank's own clock, and loads it without waiting).

On CPU (``backend="gloo"``, the default without CUDA) RecBole's hard-wired NCCL/CUDA set-up is
replaced in-process: ``Config._init_device`` joins a gloo group on ``cpu``, and the trainer's
``DistributedDataParallel`` is built without ``device_ids``. With CUDA, RecBole's NCCL path runs as is.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from urecjpq_plugin.config import URecJPQError
from urecjpq_plugin.inject import jpq_modules, subclass_with

BACKENDS = ("gloo", "nccl")
# Facts gathered in this rank for the result rank 0 hands back (per-rank digests).
_RUN_FACTS: dict[str, Any] = {}
_PATCHED: list[str] = []  # backend whose patches this process holds


from urecjpq_plugin.distributed import (  # noqa: F401  (JPQCodesMismatchError: raised through sync_jpq_codes)
    JPQCodesMismatchError,
    JPQDistributedError,
    codes_digest,
    gather,
    ignore_fixed_buffers_in_ddp,
    sync_jpq_codes,
)


def _weights_summary(model: nn.Module) -> dict[str, str]:
    return {name: codes_digest(m.sub_embeddings) for name, m in jpq_modules(model).items()}


# -- RecBole patches installed in each spawned rank ---------------------------------------------
_SYNCED: dict[type, type] = {}


def _synced_model_class(cls: type) -> type:
    """Subclass whose construction ends by making JPQ codes identical across ranks."""
    if cls in _SYNCED:
        return _SYNCED[cls]

    def __init__(self: nn.Module, config: Any, dataset: Any) -> None:
        cls.__init__(self, config, dataset)
        if dist.is_available() and dist.is_initialized() and jpq_modules(self):
            _RUN_FACTS["jpq_codes_sha256_by_rank"] = [
                {name: digest for name, (_, digest) in s.items()} for s in sync_jpq_codes(self)
            ]
            ignore_fixed_buffers_in_ddp(self)

    _SYNCED[cls] = subclass_with(cls, __init__=__init__)
    return _SYNCED[cls]


def _distributed_trainer_class(cls: type) -> type:
    """Every rank tests rank 0's checkpoint, after rank 0 has written it."""

    def __init__(self: Any, config: Any, model: Any) -> None:
        # RecBole's ensure_dir checks, then creates: two ranks racing there raise FileExistsError
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        cls.__init__(self, config, model)
        if not config["single_spec"] and hasattr(self, "saved_model_file"):
            name = [self.saved_model_file]
            dist.broadcast_object_list(name, src=0)
            self.saved_model_file = name[0]

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = cls.fit(self, *args, **kwargs)
        if not self.config["single_spec"] and jpq_modules(self.model):
            _RUN_FACTS["jpq_weights_sha256_by_rank"] = gather(_weights_summary(self.model))
        return out

    def evaluate(self: Any, eval_data: Any, *args: Any, **kwargs: Any) -> Any:
        load_best = kwargs.get("load_best_model", args[0] if args else True)
        if not self.config["single_spec"] and load_best and eval_data and not kwargs.get("model_file"):
            dist.barrier()
        return cls.evaluate(self, eval_data, *args, **kwargs)

    return subclass_with(cls, __init__=__init__, fit=fit, evaluate=evaluate)


def _init_device_gloo(original: Any) -> Any:
    """``Config._init_device`` for CPU ranks: a gloo group on ``cpu`` instead of NCCL on ``cuda:rank``."""

    def _init_device(self: Any) -> None:
        cfg = self.final_config_dict
        if "local_rank" not in cfg:
            return original(self)
        gpu_id = cfg["gpu_id"]
        cfg["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
        dist.init_process_group(
            backend="gloo",
            rank=cfg["local_rank"] + cfg["offset"],
            world_size=cfg["world_size"],
            init_method=f"tcp://{cfg['ip']}:{cfg['port']}",
        )
        cfg["device"] = torch.device("cpu")
        cfg["single_spec"] = False
        if cfg["local_rank"] != 0:  # as RecBole does for its NCCL ranks
            cfg["state"] = "error"
            cfg["show_progress"] = False
            cfg["verbose"] = False

    _init_device._urecjpq_original = original  # type: ignore[attr-defined]
    return _init_device


def _cpu_ddp(module: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
    """RecBole passes ``device_ids=[local_rank]``; DDP refuses device ids for CPU modules."""
    if next(module.parameters()).device.type == "cpu":
        kwargs.pop("device_ids", None)
        kwargs.pop("output_device", None)
    return nn.parallel.DistributedDataParallel(module, *args, **kwargs)


class _NoTensorboard:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _init_logger_rank0_files(original: Any) -> Any:
    """RecBole opens a (silent, empty) log file in every rank; keep only rank 0's."""

    def init_logger(config: Any) -> None:
        # RecBole's ensure_dir checks, then creates ./log/<model>: ranks racing there fail with
        # FileExistsError; create it first, idempotently.
        os.makedirs(os.path.join("log", str(config["model"])), exist_ok=True)
        original(config)
        if config["single_spec"] or config["local_rank"] == 0:
            return
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, logging.FileHandler):
                root.removeHandler(handler)
                handler.close()
                if os.path.isfile(handler.baseFilename) and os.path.getsize(handler.baseFilename) == 0:
                    os.remove(handler.baseFilename)

    return init_logger


def install_rank_patches(local_rank: int, backend: str, activate: Callable[[], None]) -> None:
    """Activate the plugin (the RecBole host's ``activate``) and patch RecBole for this rank (this process only)."""
    if _PATCHED:
        return
    activate()  # first: its compat shims must be in place before recbole.quick_start is imported
    from recbole.config import configurator
    from recbole.quick_start import quick_start
    from recbole.trainer import trainer

    built = quick_start.get_model
    quick_start.get_model = lambda name: _synced_model_class(built(name))
    chosen = quick_start.get_trainer
    quick_start.get_trainer = lambda model_type, name: _distributed_trainer_class(chosen(model_type, name))
    quick_start.init_logger = _init_logger_rank0_files(quick_start.init_logger)
    if local_rank != 0:
        trainer.get_tensorboard = lambda logger: _NoTensorboard()
    if backend == "gloo":
        configurator.Config._init_device = _init_device_gloo(configurator.Config._init_device)
        trainer.DistributedDataParallel = _cpu_ddp
    _PATCHED.append(backend)


def _worker(local_rank: int, model: str, dataset: str, config_file_list: Any, config_dict: dict,
            saved: bool, backend: str, threads: int | None, queue: Any, activate: Callable[[], None]) -> None:
    """One rank (target of ``mp.spawn``): patch, then RecBole's own ``run_recbole``."""
    if threads:
        torch.set_num_threads(threads)
    install_rank_patches(local_rank, backend, activate)
    from recbole.quick_start import run_recbole

    config_dict = {**config_dict, "local_rank": local_rank}
    try:
        result = run_recbole(model=model, dataset=dataset, config_file_list=config_file_list,
                             config_dict=config_dict, saved=saved)
    except URecJPQError as err:
        queue.put(("error", err))  # the parent re-raises it as a one-line error
        raise
    if local_rank == 0:
        queue.put(("result", {**result, **_RUN_FACTS}))


def resolve_backend(backend: str | None) -> str:
    """``None``: NCCL when CUDA is available (RecBole's own path), else gloo on CPU."""
    if backend is None:
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in BACKENDS:
        raise JPQDistributedError(f"backend={backend!r} is unknown; valid: {', '.join(BACKENDS)} (or None: auto)")
    if backend == "nccl" and not torch.cuda.is_available():
        raise JPQDistributedError("backend='nccl' needs CUDA, which this machine lacks; use 'gloo' for CPU ranks")
    return backend


def run_distributed(
    model: str,
    dataset: str,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
    saved: bool = True,
    nproc: int = 1,
    world_size: int = -1,
    ip: str = "localhost",
    port: str | int = "5678",
    group_offset: int = 0,
    backend: str | None = None,
    activate: Callable[[], None] | None = None,
) -> dict | None:
    """RecBole's ``run(..., nproc, world_size, ip, port, group_offset)`` with JPQ in every rank.

    Spawns ``nproc`` ranks on this machine, global ranks ``group_offset .. group_offset+nproc-1`` of
    ``world_size`` (``-1``: ``nproc``). Returns rank 0's result (RecBole's dict plus
    ``jpq_codes_sha256_by_rank`` / ``jpq_weights_sha256_by_rank`` when JPQ is on); ``None`` on nodes
    without rank 0. ``activate``: installs the host's hooks in each rank (default: the RecBole host's,
    which :func:`urecjpq_plugin.hosts.recbole.hook.run` passes; it pickles by reference for ``spawn``).
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    if not isinstance(nproc, int) or nproc < 1:
        raise JPQDistributedError(f"nproc={nproc!r} is invalid; it must be a positive integer")
    world_size = nproc if world_size in (-1, None) else world_size
    if world_size < nproc + group_offset:
        raise JPQDistributedError(
            f"world_size={world_size} is smaller than group_offset + nproc = {group_offset + nproc}; "
            "world_size counts the ranks of all machines"
        )
    backend = resolve_backend(backend)
    if activate is None:
        raise JPQDistributedError("run_distributed needs activate= (use urecjpq_plugin.hosts.recbole.hook.run, which passes it)")
    threads = None
    if backend == "gloo" and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // nproc)  # ranks share this machine's cores
    config_dict = {**(config_dict or {}), "world_size": world_size, "ip": ip, "port": port, "nproc": nproc,
                   "offset": group_offset}
    queue = mp.get_context("spawn").SimpleQueue()
    try:
        mp.spawn(_worker, args=(model, dataset, config_file_list, config_dict, saved, backend, threads, queue, activate),
                 nprocs=nproc, join=True)
    except ProcessException:
        for kind, value in _drain(queue):
            if kind == "error":
                raise value from None
        raise
    results = [value for kind, value in _drain(queue) if kind == "result"]
    return results[0] if results else None


def _drain(queue: Any) -> list[tuple[str, Any]]:
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items

"""RecBole's multi-process training (``nproc`` / ``world_size``) with the plugin active in every rank.

RecBole's ``run`` spawns ranks with ``mp.spawn(run_recboles, ...)``. Spawned processes start fresh,
so in-process hooks of the parent (``activate()``) are not in them; :func:`run_distributed` spawns
:func:`_worker` instead, which activates the plugin and installs the patches below before calling
RecBole's own ``run_recbole``. Nothing of RecBole is edited on disk.

In every rank:

- JPQ codes are made identical by construction: each rank builds its model (and codes) as usual,
  then rank 0's codes and sub-embeddings are broadcast, and a sha256 digest of every rank's codes is
  compared (:func:`verify_codes_identical`, raising :class:`JPQCodesMismatchError`). Broadcasting,
  rather than trusting every rank to recompute the same codes, keeps multi-machine runs correct
  when BLAS differs between machines (SVD codes can then differ in the last bit of a quantile); the
  digest check guards the broadcast and catches ranks whose tables differ in shape (different data).
  DDP is then told to ignore the fixed ``codes`` buffers, so they are not re-broadcast every step.
- Sub-embeddings are ordinary Parameters: DDP all-reduces their gradients like any other.
- Only rank 0 writes logs, tensorboard files and checkpoints; every rank loads rank 0's checkpoint
  for the final test (RecBole names it by each rank's own clock, and loads it without waiting).

On CPU (``backend="gloo"``, the default without CUDA) RecBole's hard-wired NCCL/CUDA set-up is
replaced in-process: ``Config._init_device`` joins a gloo group on ``cpu``, and the trainer's
``DistributedDataParallel`` is built without ``device_ids``. With CUDA, RecBole's NCCL path runs as is.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from urecjpq_plugin.config import URecJPQError
from urecjpq_plugin.inject import jpq_modules, subclass_with

BACKENDS = ("gloo", "nccl")
# Facts gathered in this rank for the result rank 0 hands back (per-rank digests).
_RUN_FACTS: dict[str, Any] = {}
_PATCHED: list[str] = []  # backend whose patches this process holds


class JPQDistributedError(URecJPQError):
    """Bad distributed settings (backend, process counts)."""


class JPQCodesMismatchError(URecJPQError):
    """Ranks of one distributed run hold different JPQ codes for the same table."""


# -- codes agreement (host-agnostic: torch.distributed only) -----------------------------------
def codes_digest(codes: torch.Tensor) -> str:
    """sha256 of a codes tensor's dtype, shape and bytes (hex)."""
    data = codes.detach().cpu().contiguous()
    h = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _summary(model: nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    return {name: (tuple(m.codes.shape), codes_digest(m.codes)) for name, m in jpq_modules(model).items()}


def _gather(obj: Any) -> list[Any]:
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def _disagreements(gathered: Sequence[dict], what: int) -> dict[str, list[int]]:
    """Table -> ranks whose entry ``what`` (0 shape, 1 digest) differs from rank 0's (or is missing)."""
    bad: dict[str, list[int]] = {}
    for name in sorted(set().union(*gathered)):
        ref = gathered[0].get(name)
        ranks = [
            r for r, s in enumerate(gathered)
            if (s.get(name) is None) != (ref is None) or (ref is not None and name in s and s[name][what] != ref[what])
        ]
        if ranks:
            bad[name] = ranks
    return bad


def _raise_mismatch(bad: dict[str, list[int]], gathered: Sequence[dict], reason: str) -> None:
    name, ranks = next(iter(bad.items()))
    other = ranks[0]
    ref, got = gathered[0].get(name), gathered[other].get(name)
    show = (lambda s: "missing" if s is None else f"shape {s[0]} sha256 {s[1][:12]}")  # noqa: E731
    more = f" (and {len(bad) - 1} more tables)" if len(bad) > 1 else ""
    raise JPQCodesMismatchError(
        f"JPQ codes of table {name!r} differ between rank 0 and rank(s) {', '.join(map(str, ranks))}{more}: "
        f"rank 0 {show(ref)}, rank {other} {show(got)}; {reason}"
    )


def verify_codes_identical(model: nn.Module) -> list[dict[str, tuple[tuple[int, ...], str]]]:
    """All-gather every rank's codes digests; raise :class:`JPQCodesMismatchError` if any differ.

    Collective: every rank of the default group must call it. Returns the per-rank summaries.
    """
    gathered = _gather(_summary(model))
    bad = _disagreements(gathered, 1)
    if bad:
        _raise_mismatch(bad, gathered, "every rank must train the same codes (same data, split and jpq_* options)")
    return gathered


def _comm_device(default: torch.device) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if default.type != "cpu" else default


@torch.no_grad()
def broadcast_codes(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s codes and sub-embeddings into every rank's JPQ tables (collective).

    Table shapes must already agree (see :func:`sync_jpq_codes`).
    """
    for _, module in sorted(jpq_modules(model).items()):
        for tensor in (module.codes, module.sub_embeddings):
            dev = _comm_device(tensor.device)
            # Bytes, so uint16/uint32 codes travel on backends without unsigned wide types.
            buf = tensor.detach().to(dev).contiguous().reshape(-1).view(torch.uint8).clone()
            dist.broadcast(buf, src=src)
            tensor.copy_(buf.view(tensor.dtype).reshape(tensor.shape).to(tensor.device))


def sync_jpq_codes(model: nn.Module, src: int = 0) -> list[dict]:
    """Make every rank's JPQ tables rank ``src``'s, then verify; returns per-rank code summaries.

    Raises :class:`JPQCodesMismatchError` when ranks hold tables of different shapes (their data
    differ, which broadcasting cannot fix) or, after the broadcast, different codes.
    """
    before = _gather(_summary(model))
    bad_shape = _disagreements(before, 0)
    if bad_shape:
        _raise_mismatch(bad_shape, before, "ranks built different tables; every rank must load the same dataset")
    recomputed = _disagreements(before, 1)
    if recomputed and dist.get_rank() == 0:
        logging.getLogger().warning(
            "JPQ codes computed on rank(s) %s differ from rank 0's for %s; all ranks use rank 0's codes",
            sorted({r for rs in recomputed.values() for r in rs}),
            ", ".join(recomputed),
        )
    broadcast_codes(model, src)
    return verify_codes_identical(model)


def _ignore_fixed_buffers_in_ddp(model: nn.Module) -> None:
    """Codes and offsets never change: keep DDP from broadcasting them on every forward."""
    names = [f"{n}.{b}" for n, m in jpq_modules(model).items() for b in ("codes", "offsets")]
    previous = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    setter = getattr(nn.parallel.DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model", None)
    if setter is not None:
        setter(model, previous + names)


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
            _ignore_fixed_buffers_in_ddp(self)

    _SYNCED[cls] = subclass_with(cls, __init__=__init__)
    return _SYNCED[cls]


def _distributed_trainer_class(cls: type) -> type:
    """Every rank tests rank 0's checkpoint, after rank 0 has written it."""

    def __init__(self: Any, config: Any, model: Any) -> None:
        cls.__init__(self, config, model)
        if not config["single_spec"] and hasattr(self, "saved_model_file"):
            name = [self.saved_model_file]
            dist.broadcast_object_list(name, src=0)
            self.saved_model_file = name[0]

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = cls.fit(self, *args, **kwargs)
        if not self.config["single_spec"] and jpq_modules(self.model):
            _RUN_FACTS["jpq_weights_sha256_by_rank"] = _gather(_weights_summary(self.model))
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

"""DistributedDataParallel with JPQ tables, for any training loop (RecBole's ranks use it too).

Every rank must train the same codes. :func:`prepare_ddp` (or :func:`wrap_ddp`, which then builds the
``DistributedDataParallel``) makes them so once, at wrap time: rank 0's codes and sub-embeddings are
broadcast and a sha256 digest of every rank's codes is compared (one line naming the table and ranks
on a mismatch; tables of different shapes mean different data and stop the run). Broadcasting rather
than trusting each rank to recompute the codes keeps multi-machine runs right when BLAS differs
between machines (SVD codes can then differ in the last bit of a quantile).

Codes, offsets and row scales never change during training, so DDP must not broadcast them on every
forward (``N * M`` bytes a step: 160 MB at 10^7 IDs). They go on DDP's ignore list
(``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``, the static method DDP reads
when it wraps a model; ``broadcast_buffers=False`` would also stop other buffers, such as batch-norm
statistics, from being synchronised), so they are sent once, by :func:`prepare_ddp`, and never again.
Sub-embeddings are ordinary parameters: DDP all-reduces their gradients.

    model = MyModel(); apply_jpq(model, config, counts, interactions=train)
    ddp = wrap_ddp(model.to(device), device_ids=[local_rank])   # after init_process_group, every rank
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from urecjpq_plugin.config import URecJPQError
from urecjpq_plugin.inject import jpq_modules

FIXED_BUFFERS = ("codes", "offsets", "row_scale")  # a JPQEmbedding's buffers that training never changes


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


def gather(obj: Any) -> list[Any]:
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
    gathered = gather(_summary(model))
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
    before = gather(_summary(model))
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


def fixed_buffer_names(model: nn.Module) -> list[str]:
    """Qualified names of every JPQ table's fixed buffers (codes, offsets, row scale) in ``model``."""
    names = []
    for prefix, module in jpq_modules(model).items():
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer_name in FIXED_BUFFERS and buffer is not None:
                names.append(f"{prefix}.{buffer_name}" if prefix else buffer_name)
    return names


def ignore_fixed_buffers_in_ddp(model: nn.Module) -> None:
    """Put the JPQ tables' fixed buffers on DDP's ignore list (read when DDP wraps ``model``)."""
    previous = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    setter = getattr(nn.parallel.DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model", None)
    if setter is None:
        raise JPQDistributedError(
            f"this torch ({torch.__version__}) has no DistributedDataParallel ignore list; build DDP with "
            "broadcast_buffers=False"
        )
    setter(model, sorted(set(previous + fixed_buffer_names(model))))


def prepare_ddp(model: nn.Module, src: int = 0) -> list[dict]:
    """Before ``DistributedDataParallel(model, ...)``, on every rank: rank ``src``'s codes and
    sub-embeddings everywhere (checked once by digest), and the fixed buffers kept out of DDP's
    per-step broadcast. Returns the per-rank code summaries."""
    if not (dist.is_available() and dist.is_initialized()):
        raise JPQDistributedError("prepare_ddp needs torch.distributed initialised (init_process_group) first")
    summaries = sync_jpq_codes(model, src)
    ignore_fixed_buffers_in_ddp(model)
    return summaries


def wrap_ddp(model: nn.Module, **ddp_kwargs: Any) -> nn.parallel.DistributedDataParallel:
    """:func:`prepare_ddp`, then ``DistributedDataParallel(model, **ddp_kwargs)``."""
    prepare_ddp(model)
    return nn.parallel.DistributedDataParallel(model, **ddp_kwargs)

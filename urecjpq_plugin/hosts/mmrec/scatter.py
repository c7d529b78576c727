"""A pure-torch stand-in for ``torch_scatter`` (a compiled extension), for MMRec models on a CPU stack.

MMRec (commit e775373) calls ``torch_scatter.scatter_add`` (``utils.get_sparse_laplacian``, used by
MGCN and SMORE) and imports ``torch_scatter.scatter`` (SLMRec). :func:`install` puts a module with
torch_scatter's reductions, same signatures and semantics, into ``sys.modules`` when the real package
cannot be imported; nothing is replaced where it can.

Semantics kept from torch_scatter: a 1-D ``index`` is broadcast over ``src`` along ``dim``; the output
size along ``dim`` is ``dim_size`` or ``index.max() + 1``; groups no index points at are 0 (1 for mul), and
their min/max ``argmin``/``argmax`` is ``src.size(dim)``; min/max pass the gradient to the
first arg-extreme element only; ``mean`` divides by the count, at least 1 (floor for integers).
Built on ``Tensor.scatter_add_`` / ``scatter_reduce_``, so autograd works as for any torch op.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Optional, Tuple

import torch

from urecjpq_plugin.config import URecJPQError

MODULE_NAME = "torch_scatter"
REDUCTIONS = ("sum", "add", "mul", "mean", "min", "max")


class ScatterReduceError(URecJPQError, ValueError):
    """An unknown ``reduce`` (a ValueError too, as torch_scatter raises)."""


def broadcast(index: torch.Tensor, src: torch.Tensor, dim: int) -> torch.Tensor:
    """torch_scatter's broadcast: a 1-D index runs along ``dim`` and is expanded to ``src``'s shape."""
    if dim < 0:
        dim = src.dim() + dim
    if index.dim() == 1:
        index = index.view([1] * dim + [-1] + [1] * (src.dim() - dim - 1))
    while index.dim() < src.dim():
        index = index.unsqueeze(-1)
    return index.expand(src.size())


def _output_size(src: torch.Tensor, index: torch.Tensor, dim: int, dim_size: Optional[int]) -> list:
    size = list(src.size())
    if dim_size is not None:
        size[dim] = int(dim_size)
    else:
        size[dim] = int(index.max()) + 1 if index.numel() > 0 else 0
    return size


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
                dim_size: Optional[int] = None) -> torch.Tensor:
    index = broadcast(index, src, dim)
    if out is None:
        out = src.new_zeros(_output_size(src, index, dim, dim_size))
        return out.scatter_add(dim, index, src)
    return out.scatter_add_(dim, index, src)


scatter_add = scatter_sum


def scatter_mul(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
                dim_size: Optional[int] = None) -> torch.Tensor:
    index = broadcast(index, src, dim)
    if out is None:
        out = src.new_ones(_output_size(src, index, dim, dim_size))
        return out.scatter_reduce(dim, index, src, "prod", include_self=True)
    return out.scatter_reduce_(dim, index, src, "prod", include_self=True)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
                 dim_size: Optional[int] = None) -> torch.Tensor:
    given = out is not None
    out = scatter_sum(src, index, dim, out, dim_size)
    dim = dim + src.dim() if dim < 0 else dim
    index_dim = min(dim, index.dim() - 1)  # a 1-D index counts along its only dimension
    count = scatter_sum(torch.ones(index.size(), dtype=out.dtype, device=out.device), index, index_dim,
                        None, out.size(dim))
    count = broadcast(count.clamp(min=1), out, dim)
    if out.is_floating_point():
        return out.true_divide_(count) if given else out / count
    return out.div_(count, rounding_mode="floor")


def _scatter_arg_extreme(src: torch.Tensor, index: torch.Tensor, dim: int, out: Optional[torch.Tensor],
                         dim_size: Optional[int], largest: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    dim = dim + src.dim() if dim < 0 else dim
    index = broadcast(index, src, dim)
    size = _output_size(src, index, dim, dim_size) if out is None else list(out.size())
    n = src.size(dim)
    with torch.no_grad():
        extreme = src.new_zeros(size) if out is None else out.detach().clone()
        extreme.scatter_reduce_(dim, index, src.detach(), "amax" if largest else "amin", include_self=out is not None)
        # the first position along dim that attains its group's extreme (torch_scatter's arg)
        hit = src.detach() == extreme.gather(dim, index)
        positions = torch.arange(n, device=src.device).view([1] * dim + [-1] + [1] * (src.dim() - dim - 1))
        candidates = torch.where(hit, positions.expand(src.size()), torch.full_like(index, n))
        arg = torch.full(size, n, dtype=torch.long, device=src.device)
        arg.scatter_reduce_(dim, index, candidates, "amin", include_self=True)
    found = arg < n
    # read the value back from src at arg, so the gradient reaches exactly that element
    picked = src.gather(dim, arg.clamp(max=max(n - 1, 0))) if n > 0 else src.new_zeros(size)
    fallback = src.new_zeros(size) if out is None else out
    result = torch.where(found, picked, fallback)
    if out is not None:
        with torch.no_grad():
            out.copy_(result)
    return result, arg


def scatter_max(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
                dim_size: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    return _scatter_arg_extreme(src, index, dim, out, dim_size, largest=True)


def scatter_min(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
                dim_size: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    return _scatter_arg_extreme(src, index, dim, out, dim_size, largest=False)


def scatter(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
            dim_size: Optional[int] = None, reduce: str = "sum") -> torch.Tensor:
    if reduce in ("sum", "add"):
        return scatter_sum(src, index, dim, out, dim_size)
    if reduce == "mul":
        return scatter_mul(src, index, dim, out, dim_size)
    if reduce == "mean":
        return scatter_mean(src, index, dim, out, dim_size)
    if reduce == "min":
        return scatter_min(src, index, dim, out, dim_size)[0]
    if reduce == "max":
        return scatter_max(src, index, dim, out, dim_size)[0]
    raise ScatterReduceError(f"reduce={reduce!r} is not supported; valid: {', '.join(REDUCTIONS)}")


def _float_or_fail(src: torch.Tensor, what: str) -> None:
    if not torch.is_floating_point(src):
        raise ScatterReduceError(f"{what} needs a floating-point src, got {src.dtype}")


def scatter_softmax(src: torch.Tensor, index: torch.Tensor, dim: int = -1,
                    dim_size: Optional[int] = None) -> torch.Tensor:
    """Softmax of ``src`` within each group of ``index`` along ``dim`` (same shape as ``src``)."""
    _float_or_fail(src, "scatter_softmax")
    index = broadcast(index, src, dim)
    # shifting by the group max (no gradient needed: softmax is shift-invariant) keeps exp finite
    group_max = scatter_max(src.detach(), index, dim, dim_size=dim_size)[0]
    exp = (src - group_max.gather(dim, index)).exp()
    return exp / scatter_sum(exp, index, dim, dim_size=dim_size).gather(dim, index)


def scatter_log_softmax(src: torch.Tensor, index: torch.Tensor, dim: int = -1, eps: float = 1e-12,
                        dim_size: Optional[int] = None) -> torch.Tensor:
    _float_or_fail(src, "scatter_log_softmax")
    index = broadcast(index, src, dim)
    shifted = src - scatter_max(src.detach(), index, dim, dim_size=dim_size)[0].gather(dim, index)
    total = scatter_sum(shifted.exp(), index, dim, dim_size=dim_size).gather(dim, index)
    return shifted - (total + eps).log()


EXPORTED = ("scatter", "scatter_sum", "scatter_add", "scatter_mul", "scatter_mean", "scatter_min", "scatter_max",
            "scatter_softmax", "scatter_log_softmax")


def standin_module() -> types.ModuleType:
    module = types.ModuleType(MODULE_NAME, "urecjpq_plugin's pure-torch stand-in for torch_scatter")
    module.__spec__ = importlib.machinery.ModuleSpec(MODULE_NAME, None)  # find_spec() answers, like for a real one
    module.__version__ = "0.0.0+urecjpq"  # type: ignore[attr-defined]
    module.urecjpq_standin = True  # type: ignore[attr-defined]
    for name in EXPORTED:
        setattr(module, name, globals()[name])
    module.__all__ = list(EXPORTED)  # type: ignore[attr-defined]
    return module


def install() -> bool:
    """Put the stand-in into ``sys.modules`` when ``torch_scatter`` cannot be imported; True if it did."""
    if MODULE_NAME in sys.modules:
        return False
    if importlib.util.find_spec(MODULE_NAME) is not None:
        try:
            importlib.import_module(MODULE_NAME)
            return False
        except (ImportError, OSError):  # installed but built for another torch: undefined symbols
            pass
    # torch_geometric decides once, at import, whether torch_scatter is there and then calls extra
    # torch_scatter functions (segment_csr, ...); importing it first keeps it on its pure-torch paths.
    if importlib.util.find_spec("torch_geometric") is not None:
        import torch_geometric.typing  # noqa: F401
    sys.modules[MODULE_NAME] = standin_module()
    return True

"""``torch_scatter`` for MMRec on a stack without it: a thin module over ``torch_geometric.utils.scatter``.

MMRec (commit e775373) calls ``torch_scatter.scatter_add`` (``utils.get_sparse_laplacian``, used by
MGCN and SMORE) and imports ``torch_scatter.scatter`` (SLMRec). torch_scatter is a compiled extension
(source-only on PyPI); torch_geometric, in the ``mmrec`` extra, has the same reductions in pure torch.
:func:`standin_module` offers just those two names, with torch_scatter's signatures (``dim=-1`` by
default, ``out`` accumulated into) for the 1-D index MMRec passes.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Optional

import torch

from urecjpq_plugin.config import URecJPQError

MODULE_NAME = "torch_scatter"


class ScatterIndexError(URecJPQError, ValueError):
    """An index this stand-in does not take (torch_scatter broadcasts n-D indices; MMRec passes 1-D)."""


def scatter(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
            dim_size: Optional[int] = None, reduce: str = "sum") -> torch.Tensor:
    from torch_geometric.utils import scatter as pyg_scatter

    if index.dim() != 1:
        raise ScatterIndexError(f"torch_scatter stand-in: index of shape {tuple(index.shape)}; only a 1-D index along dim is supported")
    dim = dim + src.dim() if dim < 0 else dim
    if out is not None:
        if reduce not in ("sum", "add"):
            raise ScatterIndexError(f"torch_scatter stand-in: out= with reduce={reduce!r}; only sum/add accumulate into out")
        return out.add_(pyg_scatter(src, index, dim, out.size(dim), "sum"))
    return pyg_scatter(src, index, dim, dim_size, reduce)


def scatter_add(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
                dim_size: Optional[int] = None) -> torch.Tensor:
    return scatter(src, index, dim, out, dim_size, "sum")


def standin_module() -> types.ModuleType:
    module = types.ModuleType(MODULE_NAME, "urecjpq_plugin's stand-in for torch_scatter (torch_geometric.utils.scatter)")
    module.__spec__ = importlib.machinery.ModuleSpec(MODULE_NAME, None)  # find_spec() answers, like for a real one
    module.__version__ = "0.0.0+urecjpq"  # type: ignore[attr-defined]
    module.urecjpq_standin = True  # type: ignore[attr-defined]
    module.scatter, module.scatter_add = scatter, scatter_add  # type: ignore[attr-defined]
    module.__all__ = ["scatter", "scatter_add"]  # type: ignore[attr-defined]
    return module


def needed() -> bool:
    """True when ``torch_scatter`` does not import (missing, or built for another torch) and the stand-in can
    serve (torch_geometric is installed)."""
    if MODULE_NAME in sys.modules or importlib.util.find_spec("torch_geometric") is None:
        return False
    if importlib.util.find_spec(MODULE_NAME) is not None:
        try:
            importlib.import_module(MODULE_NAME)
            return False
        except (ImportError, OSError):  # installed but built for another torch: undefined symbols
            pass
    # torch_geometric decides once, at import, whether torch_scatter is there and then calls extra
    # torch_scatter functions (segment_csr, ...); importing it first keeps it on its pure-torch paths.
    import torch_geometric.typing  # noqa: F401
    return True

"""The torch_scatter stand-in (a thin module over torch_geometric.utils.scatter) against a plain loop,
and the MMRec shims installed and taken out again.

Imports only the stand-in and compat modules: no MMRec, torchvision or torch_scatter needed.
"""

import math
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric", reason="the torch_scatter stand-in wraps torch_geometric (pip install -e .[dev])")

from urecjpq_plugin.hosts.mmrec import compat  # noqa: E402
from urecjpq_plugin.hosts.mmrec import scatter as sc  # noqa: E402


def reference(src, index, dim, dim_size, reduce):
    """Group the slices of src along dim by index, one loop; empty groups are 0 (1 for mul, as torch_scatter)."""
    dim = dim % src.dim()
    out = (torch.ones if reduce == "mul" else torch.zeros)([dim_size if d == dim else n for d, n in enumerate(src.shape)], dtype=src.dtype)
    for group in range(dim_size):
        members = [src.select(dim, k) for k in range(src.shape[dim]) if int(index[k]) == group]
        if not members:
            continue
        stacked = torch.stack(members)
        value = {"sum": stacked.sum(0), "mean": stacked.mean(0), "max": stacked.max(0).values,
                 "min": stacked.min(0).values, "mul": stacked.prod(0)}[reduce]
        out.select(dim, group).copy_(value)
    return out


@pytest.mark.parametrize("shape,dim,extra", [((12,), -1, 0), ((9, 4), 0, 2), ((3, 10), 1, 1), ((4, 6, 3), 1, 2)])
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min", "mul"])
def test_values_match_loop_reference(shape, dim, extra, reduce):
    gen = torch.Generator().manual_seed(sum(shape) + len(reduce))
    src = torch.randn(shape, generator=gen)
    index = torch.randint(0, 4, (shape[dim],), generator=gen)
    dim_size = int(index.max()) + 1 + extra
    got = sc.scatter(src, index, dim, dim_size=dim_size, reduce=reduce)
    torch.testing.assert_close(got, reference(src, index, dim, dim_size, reduce))
    if reduce == "sum":
        torch.testing.assert_close(sc.scatter_add(src, index, dim, dim_size=dim_size), got)


def test_mmrec_degree_sum_default_size_and_gradient():
    """utils.get_sparse_laplacian: scatter_add(edge_weight, row, dim=0, dim_size=num_nodes)."""
    row = torch.tensor([0, 0, 2, 3, 3, 3])
    weight = torch.arange(1.0, 7.0, requires_grad=True)
    deg = sc.scatter_add(weight, row, dim=0, dim_size=5)
    assert deg.tolist() == [3.0, 0.0, 3.0, 15.0, 0.0]
    assert sc.scatter_add(weight, row).shape == (4,)  # no dim_size: index.max() + 1, as torch_scatter
    (deg * torch.arange(5.0)).sum().backward()
    assert weight.grad.tolist() == [0.0, 0.0, 2.0, 3.0, 3.0, 3.0]


def test_out_is_accumulated_into_and_other_indices_refused():
    out = torch.ones(3)
    assert sc.scatter_add(torch.ones(4), torch.tensor([0, 0, 1, 2]), out=out) is out
    assert out.tolist() == [3.0, 2.0, 2.0]
    with pytest.raises(sc.ScatterIndexError, match=r"shape \(2, 2\); only a 1-D index"):
        sc.scatter(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="reduce='max'"):
        sc.scatter(torch.ones(3), torch.zeros(3, dtype=torch.long), out=torch.zeros(1), reduce="max")


def test_install_puts_each_shim_in_and_uninstall_takes_each_out(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch_scatter", raising=False)
    monkeypatch.setattr(sc, "needed", lambda: True)  # as on a stack without a working torch_scatter
    monkeypatch.setattr(compat.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(compat, "_models_common_alias", lambda: None)  # needs MMRec's src
    monkeypatch.delattr(np, "float", raising=False)  # numpy >= 1.24 (RecBole's Config may have set it)
    cuda = torch.Tensor.cuda
    compat.uninstall()
    compat.install()
    from torch_scatter import scatter, scatter_add  # what SLMRec and MMRec's utils do

    assert scatter is sc.scatter and scatter_add is sc.scatter_add and np.float is float
    assert torch.ones(2).cuda().device.type == "cpu"
    compat.install()  # idempotent
    compat.uninstall()
    assert "torch_scatter" not in sys.modules and not hasattr(np, "float")
    assert torch.Tensor.cuda is cuda
    assert math.isclose(float(sc.scatter(torch.ones(2), torch.tensor([0, 0]))[0]), 2.0)

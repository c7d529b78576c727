"""The torch_scatter stand-in against a plain-loop reference (values, argmin/argmax, gradients).

Imports only the stand-in module: no MMRec, torchvision or torch_scatter needed.
"""

import itertools
import math
import sys
import zlib

import pytest
import torch

from urecjpq_plugin.hosts.mmrec import scatter as sc


def reference(src, index, dim, dim_size, reduce):
    """Loop over every element of src; index is full-shaped (already broadcast). Returns (out, arg)."""
    dim = dim % src.dim()
    size = list(src.shape)
    size[dim] = dim_size
    groups = {}
    for pos in itertools.product(*(range(n) for n in src.shape)):
        target = list(pos)
        target[dim] = int(index[pos])
        groups.setdefault(tuple(target), []).append((pos[dim], src[pos]))
    out = (torch.ones if reduce == "mul" else torch.zeros)(size, dtype=src.dtype)  # empty groups: 1 for mul
    arg = torch.full(size, src.shape[dim], dtype=torch.long)
    for target, members in groups.items():
        values = [v for _, v in members]
        if reduce == "sum":
            out[target] = sum(values)
        elif reduce == "mul":
            out[target] = math.prod(values)
        elif reduce == "mean":
            out[target] = sum(values) / len(values)
        else:
            best = (max if reduce == "max" else min)(values)
            out[target] = best
            arg[target] = min(p for p, v in members if v == best)
    return out, arg


def full_index(index, src, dim):
    """The reference's own broadcast of a 1-D index: index[k] applies to every element at position k of dim."""
    if index.dim() == src.dim():
        return index
    dim = dim % src.dim()
    shape = [1] * src.dim()
    shape[dim] = -1
    return index.view(shape).expand(src.shape)


CASES = [  # (src shape, dim, 1-D index?, extra dim_size beyond max index)
    ((12,), -1, True, 0),
    ((12,), 0, True, 3),
    ((9, 4), 0, True, 0),   # 2-D src, dim=0, 1-D index broadcast over columns (MMRec's degree sums)
    ((9, 4), 0, True, 2),   # dim_size larger than max index: empty groups
    ((3, 10), 1, True, 1),  # 1-D index along the last dim of a 2-D src
    ((5, 7), -1, False, 0),  # full-shaped index
    ((4, 6, 3), 1, True, 2),
]


@pytest.mark.parametrize("shape,dim,one_d,extra", CASES)
@pytest.mark.parametrize("reduce", ["sum", "mul", "mean", "min", "max"])
def test_values_match_loop_reference(shape, dim, one_d, extra, reduce):
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dim, reduce)).encode()))
    src = torch.randn(shape, generator=g, dtype=torch.float64)
    n = shape[dim]
    index = torch.randint(0, 4, (n,) if one_d else shape, generator=g)
    dim_size = int(index.max()) + 1 + extra
    want, want_arg = reference(src, full_index(index, src, dim), dim, dim_size, reduce)
    if reduce in ("min", "max"):
        got, got_arg = getattr(sc, f"scatter_{reduce}")(src, index, dim, dim_size=dim_size)
        assert torch.equal(got_arg, want_arg)
    else:
        got = sc.scatter(src, index, dim, dim_size=dim_size, reduce=reduce)
    assert got.shape == want.shape
    assert torch.allclose(got, want)
    if extra == 0:  # without dim_size the size comes from index.max() + 1
        assert torch.allclose(sc.scatter(src, index, dim, reduce=reduce), want)


def test_add_is_sum_and_integer_mean_floors():
    src = torch.tensor([1, 2, 4, 7])
    index = torch.tensor([0, 0, 1, 1])
    assert sc.scatter_add is sc.scatter_sum
    assert sc.scatter_mean(src, index).tolist() == [1, 5]  # 3 // 2 and 11 // 2
    assert sc.scatter_mean(src.double(), index, dim_size=3).tolist() == [1.5, 5.5, 0.0]


def test_out_is_accumulated_into():
    src, index = torch.ones(5), torch.tensor([0, 1, 1, 2, 2])
    out = torch.full((4,), 10.0)
    assert sc.scatter_sum(src, index, out=out) is out
    assert out.tolist() == [11.0, 12.0, 12.0, 10.0]


@pytest.mark.parametrize("reduce", ["sum", "mul", "mean", "min", "max"])
def test_gradients_match_loop_reference(reduce):
    g = torch.Generator().manual_seed(7)
    src = torch.randn(8, 3, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 2, 2, 0, 5, 2, 0, 5])
    weights = torch.randn(7, 3, generator=g, dtype=torch.float64)  # dim_size 7 > max index + 1

    got = (sc.scatter(src, index, 0, dim_size=7, reduce=reduce) * weights).sum()
    (grad,) = torch.autograd.grad(got, src)
    ref_src = src.detach().clone().requires_grad_(True)
    want = (reference(ref_src, full_index(index, ref_src, 0), 0, 7, reduce)[0] * weights).sum()
    (want_grad,) = torch.autograd.grad(want, ref_src)
    assert torch.allclose(grad, want_grad)
    assert torch.autograd.gradcheck(lambda s: sc.scatter(s, index, 0, dim_size=7, reduce=reduce), (src,))


def test_min_max_gradient_reaches_the_first_extreme_only():
    src = torch.tensor([3.0, 1.0, 3.0, 2.0], requires_grad=True)
    out, arg = sc.scatter_max(src, torch.tensor([0, 0, 0, 1]), dim_size=3)
    assert out.tolist() == [3.0, 2.0, 0.0] and arg.tolist() == [0, 3, 4]
    out.sum().backward()
    assert src.grad.tolist() == [1.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("shape,dim", [((10,), 0), ((9, 4), 0), ((3, 10), -1)])
def test_softmax_and_log_softmax_match_per_group_softmax(shape, dim):
    g = torch.Generator().manual_seed(3)
    src = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True) * 30  # large: needs the shift
    index = torch.randint(0, 3, (shape[dim],), generator=g)
    full = full_index(index, src, dim)
    want = torch.empty_like(src)
    for group in index.unique():
        mask = full == group
        size = list(src.shape)
        size[dim] = int((index == group).sum())
        want[mask] = torch.softmax(src[mask].view(size), dim=dim).flatten()
    assert torch.allclose(sc.scatter_softmax(src, index, dim), want)
    assert torch.allclose(sc.scatter_log_softmax(src, index, dim), want.log())
    leaf = src.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: sc.scatter_softmax(s, index, dim), (leaf,))
    assert torch.autograd.gradcheck(lambda s: sc.scatter_log_softmax(s, index, dim), (leaf,))


def test_bad_reduce_and_integer_softmax_fail_with_one_line():
    with pytest.raises(sc.ScatterReduceError, match="reduce='median' is not supported; valid: sum"):
        sc.scatter(torch.ones(3), torch.zeros(3, dtype=torch.long), reduce="median")
    with pytest.raises(ValueError, match="floating-point"):
        sc.scatter_softmax(torch.ones(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_install_only_when_missing(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch_scatter", raising=False)
    monkeypatch.setattr(sc.importlib.util, "find_spec", lambda name, *args: None)  # neither package installed
    assert sc.install() is True
    module = sys.modules["torch_scatter"]
    assert module.urecjpq_standin and module.scatter_add is sc.scatter_sum
    from torch_scatter import scatter  # what SLMRec does

    assert scatter is sc.scatter
    assert sc.install() is False  # already there: left alone
    assert sys.modules["torch_scatter"] is module

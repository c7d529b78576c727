"""The one cache of a JPQEmbedding: what it keeps, under which limit, and what moves it on."""

import copy
import pickle

import pytest
import torch

from urecjpq_plugin import JPQEmbedding
from urecjpq_plugin.codes import random_codes


def _table(n: int = 40) -> JPQEmbedding:
    torch.manual_seed(0)
    return JPQEmbedding(random_codes(n, 4, 8, seed=1), 8, 16)


def _fresh(emb: JPQEmbedding) -> torch.Tensor:
    return torch.cat([emb.sub_embeddings[k, emb.codes[:, k].long()] for k in range(emb.M)], 1).detach()


class DataWritingSGD(torch.optim.Optimizer):
    """An optimizer in the old style: writes through ``.data``, which no version counter sees."""

    def __init__(self, params, lr: float):
        super().__init__(params, {"lr": lr})

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.data.add_(p.grad, alpha=-group["lr"])


def test_an_optimizer_writing_through_data_moves_the_cache_on():
    emb = _table()
    with torch.no_grad():
        stale = emb.weight.clone()
        assert "table" in emb._cache
    optimizer = DataWritingSGD(emb.parameters(), lr=1.0)
    emb(torch.arange(3)).sum().backward()
    optimizer.step()
    with torch.no_grad():
        assert not torch.equal(emb.weight, stale)
        assert torch.equal(emb.weight, _fresh(emb))


def test_writes_through_data_outside_a_step_need_invalidate_cache():
    emb = _table()
    with torch.no_grad():
        emb.weight  # cached
        emb.sub_embeddings.data.copy_(torch.randn_like(emb.sub_embeddings))  # invisible to version counters
        emb.invalidate_cache()
        assert torch.equal(emb.weight, _fresh(emb))
        assert torch.equal(emb(torch.arange(40)), _fresh(emb))


@pytest.mark.parametrize("change", ["load_state_dict", "to_double", "replace_data"])
def test_every_visible_change_of_the_tensors_moves_the_cache_on(change):
    emb = _table()
    with torch.no_grad():
        emb.weight
    if change == "load_state_dict":
        emb.load_state_dict({"codes": random_codes(40, 4, 8, seed=2), "sub_embeddings": torch.randn(4, 8, 4)})
    elif change == "to_double":
        emb.double()
    else:
        emb.sub_embeddings.data = torch.randn(4, 8, 4)
    with torch.no_grad():
        assert torch.equal(emb.weight, _fresh(emb))


def test_one_limit_in_bytes_bounds_everything_the_module_keeps():
    emb = _table()
    table_bytes = 40 * 16 * 4
    emb._cache.limit_bytes = table_bytes - 1
    with torch.no_grad():
        emb.weight, emb(torch.arange(40)), emb.score(torch.randn(2, 16))
    assert len(emb._cache) == 0  # the decoded table does not fit: decoded per read, never kept
    emb._cache.limit_bytes = table_bytes
    with torch.no_grad():
        emb.weight
    assert "table" in emb._cache


def test_few_rows_without_gradient_are_gathered_until_the_second_read():
    # One no-grad read per training step (a target, a regulariser) must not decode the whole table
    # each step; evaluation (many reads between two steps) decodes once and reads from it.
    emb = _table()
    with torch.no_grad():
        emb(torch.arange(3))
        assert "table" not in emb._cache
        emb(torch.arange(3))
        assert "table" in emb._cache
        assert torch.equal(emb(torch.tensor([5, 7])), _fresh(emb)[[5, 7]])


def test_a_per_step_table_serves_reads_without_gradient_and_is_not_decoded_twice():
    emb = _table()
    emb(torch.arange(40).repeat(2)).sum().backward()
    step_table = emb._cache.peek("table")
    assert step_table is not None and step_table.requires_grad
    with torch.no_grad():
        assert emb.weight.data_ptr() == step_table.data_ptr()
    assert len(emb._cache) == 1


def test_copies_start_with_an_empty_cache_of_their_own():
    emb = _table()
    with torch.no_grad():
        emb.weight
    for clone in (copy.deepcopy(emb), pickle.loads(pickle.dumps(emb))):
        assert len(clone._cache) == 0 and clone._cache is not emb._cache
        with torch.no_grad():
            clone.sub_embeddings.add_(1.0)
            assert torch.equal(clone.weight, _fresh(clone))
            assert torch.equal(emb.weight, _fresh(emb))

"""PQ scoring equals decode-then-matmul; top-k from codes equals torch.topk on the full scores."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from urecjpq_plugin.codes import random_codes
from urecjpq_plugin.jpq import JPQEmbedding
from urecjpq_plugin import topk_kernels
from urecjpq_plugin.topk import TopKError, choose_method, pq_scores, scores_from_codes, topk_from_codes

HAVE_FAISS = topk_kernels.faiss_or_none() is not None
TOPK_METHODS = ["lut", "matmul", "auto"] + (["faiss"] if HAVE_FAISS else [])


def make_table(n: int, d: int, M: int, ksub: int, seed: int = 0, padding_idx=None) -> JPQEmbedding:
    torch.manual_seed(seed)
    table = JPQEmbedding(random_codes(n, M, ksub, seed), ksub, d, padding_idx)
    with torch.no_grad():
        table.sub_embeddings.normal_()
    return table


def full_scores(table: JPQEmbedding, queries: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return queries @ table.weight.T


def assert_same_topk(values, indices, scores, k):
    """Equal to torch.topk up to ties: same values, and each index really has its value."""
    ref_values, _ = scores.topk(k, dim=1)
    torch.testing.assert_close(values, ref_values, rtol=1e-5, atol=1e-5)
    finite = torch.isfinite(values)
    torch.testing.assert_close(scores.gather(1, indices)[finite], values[finite], rtol=1e-5, atol=1e-5)
    for row in indices:
        assert len(set(row.tolist())) == k  # no item twice


@pytest.mark.parametrize(
    "n,d,M,ksub,batch",
    [(4, 8, 2, 4, 1), (500, 16, 4, 16, 3), (3000, 64, 8, 256, 7), (4097, 32, 8, 256, 1), (1200, 16, 2, 1000, 4)],
)
def test_pq_scores_equal_decode_then_matmul(n, d, M, ksub, batch):
    table = make_table(n, d, M, ksub)
    queries = torch.randn(batch, d)
    with torch.no_grad():
        got = table.score(queries)
        chunked = pq_scores(queries, table.sub_embeddings, table.codes, chunk_size=7)
    ref = full_scores(table, queries)
    assert got.shape == (batch, n)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, ref, rtol=1e-5, atol=1e-5)


def test_pq_scores_padding_column_is_zero_like_the_decoded_row():
    table = make_table(300, 16, 4, 16, padding_idx=0)
    queries = torch.randn(2, 16)
    with torch.no_grad():
        got = table.score(queries)
    torch.testing.assert_close(got, full_scores(table, queries), rtol=1e-5, atol=1e-5)
    assert torch.all(got[:, 0] == 0)


@pytest.mark.parametrize("batch", [1, 6])  # both kernels (per-split gathers, embedding_bag)
def test_pq_scores_keep_gradients_to_sub_embeddings(batch):
    table = make_table(200, 16, 4, 16)
    queries = torch.randn(batch, 16)
    pq_scores(queries, table.sub_embeddings, table.codes).sum().backward()
    grad_pq = table.sub_embeddings.grad.clone()
    table.sub_embeddings.grad = None
    (queries @ table.weight.T).sum().backward()
    torch.testing.assert_close(grad_pq, table.sub_embeddings.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,d,M,ksub,batch,k", [(50, 8, 2, 4, 1, 50), (2000, 32, 4, 64, 5, 10), (6000, 64, 8, 256, 3, 100)])
def test_topk_equals_torch_topk_on_full_scores(n, d, M, ksub, batch, k):
    table = make_table(n, d, M, ksub, seed=n)
    queries = torch.randn(batch, d)
    with torch.no_grad():
        values, indices = topk_from_codes(queries, table.sub_embeddings, table.codes, k)
    assert values.shape == indices.shape == (batch, k)
    assert_same_topk(values, indices, full_scores(table, queries), k)


@pytest.mark.parametrize("chunk_size", [1, 3, 64, 999, 1000, 1001, 100000])
def test_any_chunk_size_gives_the_same_answer(chunk_size):
    table = make_table(1000, 16, 4, 32, seed=3)
    queries = torch.randn(4, 16)
    seen = [torch.randint(0, 1000, (int(c),)) for c in (0, 5, 50, 400)]
    with torch.no_grad():
        ref = topk_from_codes(queries, table.sub_embeddings, table.codes, 20, exclude=seen, chunk_size=1000)
        got = topk_from_codes(queries, table.sub_embeddings, table.codes, 20, exclude=seen, chunk_size=chunk_size)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    scores = full_scores(table, queries)
    for row, items in enumerate(seen):
        scores[row, items] = float("-inf")
    assert_same_topk(got[0], got[1], scores, 20)


@pytest.mark.parametrize("form", ["list", "csr", "bool"])
def test_exclusions_are_never_returned(form):
    n, batch, k = 3000, 6, 25
    table = make_table(n, 32, 8, 64, seed=7)
    queries = torch.randn(batch, 32)
    scores = full_scores(table, queries)
    # Exclude each query's current top 40 plus random items: the answer must change.
    rng = np.random.default_rng(0)
    seen = [np.union1d(scores[b].topk(40).indices.numpy(), rng.integers(0, n, 100)) for b in range(batch)]
    if form == "list":
        exclude = [torch.as_tensor(s) for s in seen]
    elif form == "csr":
        rows = np.repeat(np.arange(batch), [len(s) for s in seen])
        exclude = sp.csr_matrix((np.ones(len(rows)), (rows, np.concatenate(seen))), shape=(batch, n))
    else:
        exclude = torch.zeros(batch, n, dtype=torch.bool)
        for b, s in enumerate(seen):
            exclude[b, torch.as_tensor(s)] = True
    with torch.no_grad():
        values, indices = topk_from_codes(queries, table.sub_embeddings, table.codes, k, exclude=exclude, chunk_size=512)
    for b, s in enumerate(seen):
        assert not set(indices[b].tolist()) & set(s.tolist())
        scores[b, torch.as_tensor(s)] = float("-inf")
    assert_same_topk(values, indices, scores, k)


@pytest.mark.parametrize("method", TOPK_METHODS)
def test_padding_item_is_never_returned_even_when_it_would_rank_first(method):
    table = make_table(100, 8, 2, 8, padding_idx=0)
    queries = -torch.ones(1, 8) * 1e3  # every real item far below 0, where the padding row (0.0) would rank first
    with torch.no_grad():
        table.sub_embeddings.abs_()
        values, indices = topk_from_codes(queries, table.sub_embeddings, table.codes, 99, padding_idx=0, method=method)
    assert 0 not in indices[0].tolist()
    scores = full_scores(table, queries)
    scores[:, 0] = float("-inf")
    assert_same_topk(values, indices, scores, 99)
    with pytest.raises(TopKError, match=r"\[1, 99\]"):
        topk_from_codes(queries, table.sub_embeddings, table.codes, 100, padding_idx=0, method=method)


@pytest.mark.parametrize("method", TOPK_METHODS)
@pytest.mark.parametrize(
    "n,d,M,ksub,batch",
    [(5000, 32, 8, 256, 1), (3000, 24, 3, 16, 2), (4000, 16, 4, 16, 5), (2000, 64, 8, 1024, 3), (70000, 16, 4, 256, 2)],
)
def test_every_method_gives_the_exact_topk_with_exclusions_and_padding(method, n, d, M, ksub, batch):
    # Odd M, ksub below 256 (packed faiss codes / zero-padded pair tables), wide codes, several chunks.
    table = make_table(n, d, M, ksub, seed=n, padding_idx=1)
    queries = torch.randn(batch, d)
    seen = [torch.randint(0, n, (60 * b,)) for b in range(batch)]
    with torch.no_grad():
        values, indices = topk_from_codes(
            queries, table.sub_embeddings, table.codes, 20, exclude=seen, padding_idx=1, method=method
        )
    scores = full_scores(table, queries)
    scores[:, 1] = float("-inf")
    for row, items in enumerate(seen):
        scores[row, items] = float("-inf")
    assert_same_topk(values, indices, scores, 20)


@pytest.mark.parametrize("method", ["lut", "matmul", "auto"])
@pytest.mark.parametrize("n,d,M,ksub,batch", [(3000, 32, 8, 256, 1), (900, 24, 3, 16, 3), (70000, 16, 4, 64, 2), (5000, 8, 2, 4, 40)])
def test_full_scores_equal_decode_then_matmul_with_a_zero_padding_column(method, n, d, M, ksub, batch):
    table = make_table(n, d, M, ksub, seed=2, padding_idx=3)
    queries = torch.randn(batch, d)
    with torch.no_grad():
        got = scores_from_codes(queries, table.sub_embeddings, table.codes, padding_idx=3, method=method)
    torch.testing.assert_close(got, full_scores(table, queries), rtol=1e-5, atol=1e-5)
    assert torch.all(got[:, 3] == 0)


@pytest.mark.parametrize("batch", [1, 300])  # the scan and the matmul choice
def test_score_keeps_gradients_when_training(batch):
    table = make_table(500, 16, 4, 16)
    queries = torch.randn(batch, 16)
    table.score(queries).square().sum().backward()
    got = table.sub_embeddings.grad.clone()
    table.sub_embeddings.grad = None
    (queries @ table.weight.T).square().sum().backward()
    torch.testing.assert_close(got, table.sub_embeddings.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAVE_FAISS, reason="faiss not importable")
def test_faiss_scan_follows_training_updates_of_the_sub_embeddings():
    table = make_table(3000, 32, 8, 256, seed=5)
    queries = torch.randn(2, 32)
    optimizer = torch.optim.SGD(table.parameters(), lr=1.0)
    for _ in range(3):  # the cached quantiser must see every in-place optimiser step
        with torch.no_grad():
            values, indices = topk_from_codes(queries, table.sub_embeddings, table.codes, 10, method="faiss",
                                              cache=table._cache)
        assert "faiss_pq" in table._cache
        assert_same_topk(values, indices, full_scores(table, queries), 10)
        optimizer.zero_grad()
        (table(torch.randint(0, 3000, (64,))) * torch.randn(64, 32)).sum().backward()
        optimizer.step()
    with torch.no_grad():
        table.sub_embeddings.copy_(torch.randn_like(table.sub_embeddings))  # e.g. load_state_dict
        values, indices = topk_from_codes(queries, table.sub_embeddings, table.codes, 10, method="faiss",
                                          cache=table._cache)
    assert_same_topk(values, indices, full_scores(table, queries), 10)


def test_dispatch_scans_for_one_query_and_uses_matmul_for_big_batches_at_small_dsub():
    table = make_table(50000, 64, 8, 256)
    one, many = torch.randn(1, 64), torch.randn(4096, 64)
    assert choose_method(one, table.sub_embeddings, table.codes) in ("faiss", "lut")
    assert choose_method(one, table.sub_embeddings, table.codes, allow_faiss=False) == "lut"
    assert choose_method(many, table.sub_embeddings, table.codes) == "matmul"
    assert choose_method(many, table.sub_embeddings, table.codes, full=True) == "matmul"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"k": 0}, "k=0"),
        ({"k": 101}, r"\[1, 100\]"),
        ({"k": 5, "exclude": [[1]]}, "one per query"),
        ({"k": 5, "exclude": [[1], [100]]}, "item 100"),
        ({"k": 5, "exclude": sp.csr_matrix((2, 99))}, "expected"),
        ({"k": 5, "exclude": 3}, "not supported"),
        ({"k": 5, "method": "fast"}, "method='fast'"),
        ({"k": 5, "chunk_size": 0}, "chunk_size=0"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, match):
    table = make_table(100, 8, 2, 8)
    with pytest.raises(TopKError, match=match):
        topk_from_codes(torch.randn(2, 8), table.sub_embeddings, table.codes, **kwargs)


def test_query_width_must_match():
    table = make_table(10, 8, 2, 4)
    with pytest.raises(TopKError, match=r"\[B, 8\]"):
        pq_scores(torch.randn(2, 6), table.sub_embeddings, table.codes)


@pytest.mark.parametrize("method", ["lut", "matmul"])
@pytest.mark.parametrize("kind", ["lists", "bool", "scipy"])
def test_the_paths_that_never_read_back_give_the_same_top_k(monkeypatch, method, kind):
    # On a GPU the running top-k, the exclusion mask and the per-query scan take the paths that do not
    # read values back to the host; run them here on CPU tensors and compare with the CPU paths.
    import scipy.sparse as sp

    import urecjpq_plugin.topk as topk_module

    table = make_table(3000, 32, 8, 256, seed=11)
    queries = torch.randn(6, 32)
    generator = torch.Generator().manual_seed(3)
    lists = [torch.randint(0, 3000, (int(n),), generator=generator) for n in torch.randint(0, 400, (6,), generator=generator)]
    dense = torch.zeros(6, 3000, dtype=torch.bool)
    for row, ids in enumerate(lists):
        dense[row, ids] = True
    exclude = {"lists": lists, "bool": dense, "scipy": sp.csr_matrix(dense.numpy())}[kind]
    expected = topk_from_codes(queries, table.sub_embeddings, table.codes, 20, exclude=exclude, padding_idx=0,
                               method=method, chunk_size=512)
    monkeypatch.setattr(topk_module, "_syncs_are_cheap", lambda tensor: False)
    got = topk_from_codes(queries, table.sub_embeddings, table.codes, 20, exclude=exclude, padding_idx=0,
                          method=method, chunk_size=512)
    torch.testing.assert_close(got[0], expected[0])
    assert torch.equal(got[1], expected[1])
    assert not (dense.gather(1, got[1]).any() or (got[1] == 0).any())

"""Code assignment through the one entry point, and jpq_M: auto."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from urecjpq_plugin import JPQConfig, apply_jpq
from urecjpq_plugin.assign import assign_codes
from urecjpq_plugin.codes import distinct_code_fraction
from urecjpq_plugin.config import JPQConfigError, auto_M


def block_matrix(n_users=400, n_items=300, blocks=6, seed=0):
    """Users interact mostly inside their block of items: items of a block are alike."""
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for u in range(n_users):
        b = u % blocks
        items = rng.choice(np.arange(b, n_items, blocks), size=15, replace=False)
        rows += [u] * 15
        cols += list(items)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))


@pytest.mark.parametrize("how", ["auto", "svd_pq_cos", "svd_pq", "svd_pq_norm", "svd", "random"])
def test_every_assignment_gives_distinct_deterministic_codes(how):
    # (an svd_proj assignment -- every split a random mix of the top 32 singular directions -- was
    # tried and dropped: ml-100k BPR, M=16, 3 seeds, recall@20 -15.6 % against svd's +1.0 %)
    X = block_matrix()
    cfg = JPQConfig(M=8, ksub=32, code_assign=how, seed=3)
    a, b = assign_codes(cfg, X), assign_codes(cfg, X)
    for entity, n in (("user", 400), ("item", 300)):
        assert a[entity].shape == (n, 8) and a[entity].dtype == torch.uint8
        assert torch.equal(a[entity], b[entity])
        assert distinct_code_fraction(a[entity]) == 1.0


def test_auto_M_gives_each_split_at_most_four_dims():
    # d=64 -> 16 splits of 4 (the ml-100k sweep); d=10 (RecBole's CTR models) -> 5 of 2, not 2 of 5
    assert [auto_M(d) for d in (1, 4, 6, 10, 12, 64, 100)] == [1, 1, 2, 5, 3, 16, 25]


def test_auto_takes_svd_pq_cos_on_sparse_and_svd_on_dense_interactions(caplog):
    import logging

    from urecjpq_plugin.assign import SPARSE_DEGREE, resolve_auto

    rng = np.random.default_rng(0)
    sparse = sp.csr_matrix((rng.random((400, 300)) < 0.02).astype(np.float32))  # ~6 per user: ~6.9 per ID
    dense = block_matrix()  # 15 per user: 2 * 6000 / 700 = 17.1 per ID
    assert 2 * sparse.nnz / sum(sparse.shape) < SPARSE_DEGREE < 2 * dense.nnz / sum(dense.shape)
    assert resolve_auto(sparse) == "svd_pq_cos" and resolve_auto(dense) == "svd"
    assert resolve_auto(sparse, directions=False) == "svd_pq" and resolve_auto(dense, directions=False) == "svd"
    cfg = JPQConfig(M=8, ksub=32, code_assign="auto", seed=3)
    with caplog.at_level(logging.INFO, logger="urecjpq_plugin"):
        for X, how in ((sparse, "svd_pq_cos"), (dense, "svd")):
            got = assign_codes(cfg, X)
            want = assign_codes(JPQConfig(M=8, ksub=32, code_assign=how, seed=3), X)
            assert all(torch.equal(got[e], want[e]) for e in ("user", "item"))
    assert "jpq_code_assign=auto -> svd_pq_cos" in caplog.text and "jpq_code_assign=auto -> svd" in caplog.text


def test_svd_pq_norm_is_svd_pq_of_the_degree_normalised_matrix():
    from urecjpq_plugin.codes import svd_pq_codes

    rng = np.random.default_rng(1)
    X = sp.csr_matrix((rng.random((400, 300)) < 0.03 * rng.random((400, 1)) * 3).astype(np.float32))  # skewed degrees
    du, di = np.asarray(X.sum(1)).ravel(), np.asarray(X.sum(0)).ravel()
    # entry (u, i) divided by sqrt(d_u d_i), in float32 in the plugin's order: the same bits, so the same codes
    # whatever the thread count (a dense float64 division differs in the last bit and flips k-means ties)
    normalised = X.copy()
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    normalised.data *= (1.0 / np.sqrt(np.maximum(du, 1.0))).astype(np.float32)[rows]
    normalised.data *= (1.0 / np.sqrt(np.maximum(di, 1.0))).astype(np.float32)[X.indices]
    got = assign_codes(JPQConfig(M=8, ksub=32, code_assign="svd_pq_norm", seed=3, dim=32), X)
    want = svd_pq_codes(normalised, 8, 32, 3, rank=32)
    plain = assign_codes(JPQConfig(M=8, ksub=32, code_assign="svd_pq", seed=3, dim=32), X)
    assert torch.equal(got["user"], want[0]) and torch.equal(got["item"], want[1])
    assert not torch.equal(got["item"], plain["item"])
    assert X.sum() == (X != 0).sum()  # the caller's matrix is left as it was (binary)


def test_svd_pq_cos_quantises_directions_so_rarely_seen_ids_do_not_pile_onto_one_sub_id():
    # long-tailed degrees, as in Amazon/TikTok data: most IDs have short SVD factor rows, which
    # k-means of the raw rows (svd_pq) gathers on a few centroids near zero
    from urecjpq_plugin.codes import svd_pq_codes

    rng = np.random.default_rng(4)
    n_users, n_items = 2000, 1200
    item_pop = 1.0 / (np.arange(n_items) + 5) ** 0.9  # median item seen 4 times, user 3
    rows, cols = [], []
    for u in range(n_users):
        k = min(int(rng.zipf(2.0)) + 2, 60)
        rows += [u] * k
        cols += list(rng.choice(n_items, size=k, replace=False, p=item_pop / item_pop.sum()))
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    X.data[:] = 1
    X.eliminate_zeros()

    def largest_sub_id_share(codes):
        c = codes.long()
        return max(torch.bincount(c[:, k], minlength=64).max().item() for k in range(c.shape[1])) / len(c)

    raw = svd_pq_codes(X, 8, 64, 0, rank=32, distinct=False)
    cos = svd_pq_codes(X, 8, 64, 0, rank=32, distinct=False, unit_rows=True)
    for r, c in zip(raw, cos):  # measured: users 0.23 -> 0.08, items 0.37 -> 0.08
        assert largest_sub_id_share(c) < 0.5 * largest_sub_id_share(r)
    got = assign_codes(JPQConfig(M=8, ksub=64, code_assign="svd_pq_cos", seed=0, dim=32), X)
    assert got["user"].shape == (n_users, 8) and distinct_code_fraction(got["item"]) == 1.0


def test_recbole_auto_gives_ngcf_and_simplex_raw_factor_codes_on_sparse_data_and_leaves_other_cases_alone():
    # Amazon Baby, recall@20 vs uncompressed with codes from directions / raw factors: NGCF -45 % / -6.6 %,
    # SimpleX (cosine scores) -15.3 % / -2.7 %
    from torch import nn

    from urecjpq_plugin.hosts.recbole.hook import auto_codes_for_model

    rng = np.random.default_rng(0)
    sparse = sp.csr_matrix((rng.random((400, 300)) < 0.02).astype(np.float32))
    dense = block_matrix()
    NGCF, BPR = type("NGCF", (nn.Module,), {}), type("BPR", (nn.Module,), {})
    auto = JPQConfig()
    assert auto_codes_for_model(auto, NGCF(), lambda: sparse).code_assign == "svd_pq"
    assert auto_codes_for_model(auto, type("SimpleX", (nn.Module,), {})(), lambda: sparse).code_assign == "svd_pq"
    assert auto_codes_for_model(auto, type("NGCF", (NGCF,), {})(), lambda: sparse).code_assign == "svd_pq"  # host subclass
    assert auto_codes_for_model(auto, NGCF(), lambda: dense).code_assign == "auto"  # -> svd, as for every model
    assert auto_codes_for_model(auto, BPR(), lambda: sparse).code_assign == "auto"  # -> svd_pq_cos
    asked = JPQConfig(code_assign="svd_pq_cos")
    assert auto_codes_for_model(asked, NGCF(), lambda: sparse) is asked  # an explicit choice stands


def test_code_weight_reaches_the_k_means_of_svd_pq_codes_and_is_checked():
    from urecjpq_plugin.codes import svd_pq_codes

    rng = np.random.default_rng(1)
    X = block_matrix()
    X = sp.csr_matrix(X.multiply(rng.random(X.shape) < 0.5))  # uneven degrees
    X.eliminate_zeros()
    plain = assign_codes(JPQConfig(M=8, ksub=32, code_assign="svd_pq_cos", seed=3, dim=32), X)
    cfg = JPQConfig.from_mapping({"jpq_M": 8, "jpq_ksub": 32, "jpq_code_assign": "svd_pq_cos", "jpq_code_weight": "2"}, seed=3)
    weighted = assign_codes(cfg.for_dims([32]), X)
    expected = svd_pq_codes(X, 8, 32, 3, 32, unit_rows=True, degree_weight=2.0)
    assert torch.equal(weighted["item"], expected[1]) and torch.equal(weighted["user"], expected[0])
    assert not torch.equal(weighted["item"], plain["item"])
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(JPQConfigError, match="jpq_code_weight"):
            JPQConfig(code_weight=bad)
    with pytest.raises(JPQConfigError, match="jpq_code_weight='heavy'"):
        JPQConfig.from_mapping({"jpq_code_weight": "heavy"})

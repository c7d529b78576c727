import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds

from urecjpq_plugin.codes import feature_codes, kmeans_codes, quantile_bin, random_codes, randomized_svd, svd_codes


def interactions(n_users=400, n_items=300, density=0.05, seed=0):
    return sp.random(n_users, n_items, density=density, format="csr", random_state=seed, data_rvs=np.ones)


@pytest.mark.parametrize("n,ksub", [(1000, 256), (257, 256), (5000, 16), (100, 256)])
def test_quantile_bins_are_balanced(n, ksub):
    values = np.random.default_rng(0).standard_normal((n, 3))
    values[:50, 0] = 0.0  # ties
    codes = quantile_bin(values, ksub)
    for k in range(3):
        counts = torch.bincount(codes[:, k].long(), minlength=ksub)
        used = counts[counts > 0]
        assert used.max() - used.min() <= 1
        assert len(used) == min(n, ksub)


def test_quantile_bins_follow_the_values():
    values = np.arange(1024, dtype=float)[::-1].copy()[:, None]
    codes = quantile_bin(values, 4)
    assert codes[0, 0] == 3 and codes[-1, 0] == 0


def test_svd_codes_shapes_balance_and_determinism():
    X = interactions()
    user, item = svd_codes(X, M=8, ksub=16, seed=3)
    assert user.shape == (400, 8) and item.shape == (300, 8) and user.dtype == torch.uint8
    again = svd_codes(X, M=8, ksub=16, seed=3)
    assert torch.equal(user, again[0]) and torch.equal(item, again[1])
    for k in range(8):
        counts = torch.bincount(item[:, k].long(), minlength=16)
        assert counts.max() - counts.min() <= 1


def test_svd_codes_depend_on_the_interactions():
    _, item_a = svd_codes(interactions(seed=0), 4, 16, 0)
    _, item_b = svd_codes(interactions(seed=1), 4, 16, 0)
    assert not torch.equal(item_a, item_b)


def test_randomized_svd_matches_exact_singular_values():
    # Interactions drawn from a rank-5 preference model, as real feedback roughly is.
    rng = np.random.default_rng(0)
    prefs = rng.random((300, 5)) @ rng.random((5, 200))
    X = sp.csr_matrix((rng.random((300, 200)) < 0.1 * prefs / prefs.mean()).astype(float))
    _, s, Vt = randomized_svd(X, 5, seed=0)
    s_exact = np.sort(svds(X, k=5)[1])[::-1]
    assert np.allclose(s, s_exact, rtol=1e-2)
    assert np.allclose(np.abs(Vt @ Vt.T), np.eye(5), atol=1e-4)


def test_svd_codes_group_items_with_similar_users():
    # Two user communities, each with its own items: items of a community share sub-ids on the
    # leading split far more often than items across communities.
    rng = np.random.default_rng(0)
    rows, cols = [], []
    for u in range(200):
        group = u % 2
        items = rng.choice(np.arange(group * 100, group * 100 + 100), size=15, replace=False)
        rows += [u] * 15
        cols += list(items)
    X = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(200, 200))
    _, item = svd_codes(X, M=2, ksub=2, seed=0)
    lead = item[:, 0].long()
    assert (lead[:100] == lead[0]).float().mean() > 0.9 and (lead[100:] != lead[0]).float().mean() > 0.9


def test_tiny_matrix_falls_back_to_random_for_missing_components():
    user, item = svd_codes(interactions(3, 4, 0.9), M=8, ksub=4, seed=0)
    assert user.shape == (3, 8) and item.shape == (4, 8)


def test_random_codes_are_seeded_and_in_range():
    a, b, c = random_codes(500, 4, 300, 1), random_codes(500, 4, 300, 1), random_codes(500, 4, 300, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.uint16 and int(a.long().max()) < 300


def test_feature_codes_shape_and_determinism():
    feats = np.random.default_rng(0).standard_normal((300, 32))
    assert torch.equal(feature_codes(feats, 4, 16, 0), feature_codes(feats, 4, 16, 0))
    assert feature_codes(feats, 4, 16, 0).shape == (300, 4)


@pytest.mark.parametrize("n,d,M,ksub", [(64, 8, 2, 4), (500, 16, 4, 16)])
def test_kmeans_recovers_a_table_built_from_centroids(n, d, M, ksub):
    gen = torch.Generator().manual_seed(0)
    centroids = torch.randn(M, ksub, d // M, generator=gen) * 10
    true_codes = torch.randint(0, ksub, (n, M), generator=gen)
    true_codes[:ksub] = torch.arange(ksub)[:, None]  # every centroid used
    table = torch.cat([centroids[k, true_codes[:, k]] for k in range(M)], dim=1)
    codes, found = kmeans_codes(table, M, ksub, seed=0, iters=30)
    decoded = torch.cat([found[k, codes[:, k].long()] for k in range(M)], dim=1)
    assert torch.allclose(decoded, table, atol=1e-4)

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds

from urecjpq_plugin.codes import (
    distinct_code_fraction,
    distinct_codes,
    feature_codes,
    kmeans_codes,
    quantile_bin,
    random_codes,
    randomized_svd,
    svd_codes,
    svd_pq_codes,
)
from urecjpq_plugin.features import feature_id_codes


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
    s_exact = np.sort(svds(X, k=5)[1])[::-1]  # 27.6, then 9.92 .. 9.41 with no gap to the 6th (9.33)
    errors = []
    for seed in range(5):
        _, s, Vt = randomized_svd(X, 5, seed=seed)
        assert np.all(s <= s_exact * (1 + 1e-5))  # Ritz values never exceed the true ones
        errors.append(1 - s / s_exact)
        assert np.allclose(np.abs(Vt @ Vt.T), np.eye(5), atol=1e-4)
    errors = np.array(errors)
    assert errors[:, 0].max() < 1e-4  # the separated leading value is exact
    assert errors.max() < 0.02 and errors.mean() < 0.01  # the gapless ones within 1 % on average


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


def _communities(n_users=300, n_items=240, groups=3, per_user=12, seed=0):
    rng = np.random.default_rng(seed)
    size = n_items // groups
    rows, cols = [], []
    for u in range(n_users):
        g = u % groups
        rows += [u] * per_user
        cols += list(rng.choice(np.arange(g * size, (g + 1) * size), size=per_user, replace=False))
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))


def test_svd_pq_codes_are_product_quantised_svd_factors():
    X = _communities()
    user, item = svd_pq_codes(X, M=4, ksub=8, seed=1, rank=16)
    assert user.shape == (300, 4) and item.shape == (240, 4) and user.dtype == torch.uint8
    assert distinct_code_fraction(user) == 1.0 and distinct_code_fraction(item) == 1.0
    again = svd_pq_codes(X, M=4, ksub=8, seed=1, rank=16)
    assert torch.equal(user, again[0]) and torch.equal(item, again[1])
    # The leading sub-ids follow the communities: most items of a sub-id come from one community
    # (1/3 would be chance); RecJPQ's one-component binning mixes them more.
    community = np.arange(240) // 80

    def purity(lead):
        return sum(np.bincount(community[lead == c]).max() for c in np.unique(lead)) / len(lead)

    assert purity(item[:, 0].numpy()) > 0.75 > purity(svd_codes(X, 4, 8, 1)[1][:, 0].numpy())


def test_svd_pq_codes_keep_rare_ids_apart_from_popular_ones():
    # Popular items (bought by every user) and rare ones (one buyer each): on the leading split the
    # popular items share no sub-id with the rare ones, because the split sees the factors' scale.
    rng = np.random.default_rng(0)
    X = sp.lil_matrix((200, 120), dtype=np.float32)
    X[:, :20] = (rng.random((200, 20)) < 0.6).astype(np.float32)
    for i in range(20, 120):
        X[rng.integers(200), i] = 1
    _, item = svd_pq_codes(X.tocsr(), M=2, ksub=8, seed=0, rank=8, distinct=False)
    assert not set(item[:20, 0].tolist()) & set(item[20:, 0].tolist())


def test_svd_pq_codes_fall_back_to_svd_codes_on_tiny_matrices():
    X = interactions(3, 4, 0.9)
    assert all(torch.equal(a, b) for a, b in zip(svd_pq_codes(X, 8, 4, 0, rank=32), svd_codes(X, 8, 4, 0)))


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


# -- distinct codes on data full of ties ---------------------------------------------------------
def tied_interactions(n_users=300, n_items=600, seed=0):
    """Items 0-199 never interacted with (cold); 200-299 each have the same single user; 300-349
    duplicate the columns of 350-399; the rest random. Users 250-299 have no interactions."""
    rng = np.random.default_rng(seed)
    X = sp.lil_matrix((n_users, n_items), dtype=np.float32)
    X[7, 200:300] = 1.0
    block = rng.random((n_users, 300)) < 0.03
    X[:, 300:] = block
    X[:, 300:350] = X[:, 350:400]
    X[250:, :] = 0.0
    return sp.csr_matrix(X)


def tied_features(n=600, dim=16, seed=0):
    """Half the rows copies of 20 distinct rows, a tenth all zero."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, dim)).astype(np.float32)
    feats[: n // 2] = feats[rng.integers(0, 20, n // 2) + n // 2]
    feats[n // 2 : n // 2 + n // 10] = 0.0
    return feats


def assignments(M, ksub, seed):
    X, feats = tied_interactions(), tied_features()
    yield "svd", svd_codes(X, M, ksub, seed)[1]
    yield "svd users", svd_codes(X, M, ksub, seed)[0]
    yield "features", feature_codes(feats, M, ksub, seed)
    for mode in ("features", "features_svd"):
        yield f"{mode} ids", feature_id_codes(feats, X, M, ksub, seed, mode)[1]
    yield "random", random_codes(600, M, ksub, seed)


def test_tied_inputs_break_ties_per_split_before_any_repair():
    # Without a per-split tie-break, the 200 cold items would fall in the same bin in every split.
    raw = svd_codes(tied_interactions(), 8, 16, 0, distinct=False)[1]
    assert distinct_code_fraction(raw[:200]) > 0.9
    for k in range(8):
        counts = torch.bincount(raw[:, k].long(), minlength=16)
        assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("M,ksub", [(8, 16), (4, 8), (2, 25)])
def test_every_assignment_gives_distinct_codes_on_tied_data(M, ksub):
    for name, codes in assignments(M, ksub, seed=3):
        n = 300 if name == "svd users" else 600
        assert codes.shape == (n, M), name
        assert len(np.unique(codes.numpy(), axis=0)) == n, name
        assert distinct_code_fraction(codes) == 1.0, name
        for k in range(M if name != "random" else 0):  # repairs move few IDs: bins stay nearly balanced
            counts = torch.bincount(codes[:, k].long(), minlength=ksub).float()
            assert counts.max() - counts.min() <= 0.5 * n / ksub + 2, (name, k)


def test_distinct_assignments_are_seeded():
    for (name, a), (_, b), (_, c) in zip(assignments(4, 16, 0), assignments(4, 16, 0), assignments(4, 16, 1)):
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name


def test_more_ids_than_codes_share_as_few_as_possible(caplog):
    with caplog.at_level("WARNING", logger="urecjpq_plugin"):
        codes = random_codes(300, 4, 4, seed=0)  # 4**4 = 256 codes for 300 IDs
    assert len(np.unique(codes.numpy(), axis=0)) == 256
    assert distinct_code_fraction(codes) == 256 / 300
    assert "share their code" in caplog.text
    _, items = svd_codes(tied_interactions(), 4, 4, 0)
    assert distinct_code_fraction(items) == 256 / 600


def test_repair_moves_a_collision_to_a_neighbouring_sub_id():
    codes = np.array([[3, 5, 7], [3, 5, 7], [3, 5, 7], [0, 0, 0]], dtype=np.uint8)
    fixed = distinct_codes(codes, 16).numpy()
    assert (fixed[0] == codes[0]).all() and (fixed[3] == codes[3]).all()  # lowest ID keeps its code
    assert len(np.unique(fixed, axis=0)) == 4
    for row in fixed[1:3]:
        changed = np.flatnonzero(row != codes[0])
        assert len(changed) == 1 and abs(int(row[changed[0]]) - int(codes[0, changed[0]])) == 1


def test_repair_fills_a_nearly_full_code_space():
    # 2 splits x 4 sub-ids = 16 codes for 16 IDs, all starting on the same code: the one-split
    # neighbourhood runs out, the rest of the space must still be used.
    fixed = distinct_codes(np.zeros((16, 2), dtype=np.uint8), 4)
    assert len(np.unique(fixed.numpy(), axis=0)) == 16
    # 1000 equal rows, 3 x 127 one-split neighbours, a large space (128**3): the rest go anywhere free.
    fixed = distinct_codes(np.zeros((1000, 3), dtype=np.uint8), 128, seed=1)
    assert len(np.unique(fixed.numpy(), axis=0)) == 1000


def test_distinct_code_fraction_counts_rows():
    assert distinct_code_fraction(torch.tensor([[1, 2], [1, 2], [2, 1], [0, 0]])) == 0.75
    assert distinct_code_fraction(np.zeros((0, 3), dtype=np.uint8)) == 1.0


@pytest.mark.parametrize("n,ksub", [(50_000, 256), (3_000, 7)])
def test_quantile_bins_match_ranking_by_value(n, ksub):
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.standard_normal(n - n // 4), np.zeros(n // 8), np.full(n // 8, 0.25)])
    values = values[rng.permutation(n)].astype(np.float32)[:, None]
    codes = quantile_bin(values, ksub, seed=5)[:, 0].numpy().astype(np.int64)
    assert np.all(np.diff(codes[np.lexsort((codes, values[:, 0]))]) >= 0)  # bins follow the values
    order = np.argsort(values[:, 0], kind="stable")
    untied = ~np.isin(values[:, 0], [0.0, 0.25])
    reference = np.empty(n, dtype=np.int64)
    reference[order] = np.arange(n) * ksub // n
    assert np.array_equal(codes[untied], reference[untied])
    assert np.ptp(np.bincount(codes, minlength=ksub)) <= 1


def test_hosts_log_the_distinct_code_fraction(caplog):
    from urecjpq_plugin.codes import log_distinct_fractions

    tables = {"user": torch.tensor([[1, 2], [1, 2]]), "item": torch.tensor([[0, 1], [1, 0]])}
    with caplog.at_level("INFO", logger="urecjpq_plugin"):
        assert log_distinct_fractions(tables) is tables
    assert "user codes: distinct-code fraction 0.5000" in caplog.text
    assert "item codes: distinct-code fraction 1.0000" in caplog.text


def test_svd_codes_do_not_depend_on_the_thread_count():
    X = tied_interactions()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = svd_codes(X, 8, 16, 0)
        torch.set_num_threads(3)
        three = svd_codes(X, 8, 16, 0)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, three))


def test_repair_of_large_groups_keeps_one_split_moves_and_draws_its_own_stream():
    # Codes drawn from default_rng(0), then 1,000 rows set to row 0's code: row 0's one-split
    # neighbourhood (3 x 255 codes) holds most of them, the rest go anywhere free. Those draws must
    # not replay default_rng(0), which would redraw the table's own (used) rows every time.
    codes = np.random.default_rng(0).integers(0, 256, (20_000, 3)).astype(np.uint8)
    codes[19_000:] = codes[0]
    fixed = distinct_codes(codes, 256, seed=0).numpy()
    assert distinct_code_fraction(fixed) == 1.0
    first = np.zeros(19_000, dtype=bool)
    first[np.unique(codes[:19_000], axis=0, return_index=True)[1]] = True
    assert (fixed[:19_000][first] == codes[:19_000][first]).all()  # the first of each code keeps it
    changed = fixed[19_000:].astype(int) - codes[0].astype(int)
    one_split = (changed != 0).sum(axis=1) == 1
    assert 700 <= one_split.sum() <= 3 * 255
    # nearest first: every in-range distance-1 neighbour is taken (none was in use)
    distance = np.abs(changed[one_split]).max(axis=1)
    assert (distance == 1).sum() == int((codes[0] > 0).sum() + (codes[0] < 255).sum())


@pytest.mark.parametrize("weighted", [False, True])
def test_sparse_products_match_scipy(weighted):
    from urecjpq_plugin.rsvd import SparseProducts

    rng = np.random.default_rng(0)
    X = sp.random(500, 300, density=0.03, format="lil", random_state=1, dtype=np.float32,
                  data_rvs=(lambda n: rng.random(n) * 4 + 0.5) if weighted else np.ones)
    X[7] = 0  # an empty row and column
    X[:, 11] = 0
    X = X.tocsr()
    X.eliminate_zeros()
    products = SparseProducts(X)
    assert products.ones is not weighted
    D, E = rng.random((300, 9), dtype=np.float32), rng.random((500, 9), dtype=np.float32)
    assert np.allclose(products.times(D), X @ D, rtol=1e-5, atol=1e-5)
    assert np.allclose(products.t_times(E), X.T @ E, rtol=1e-5, atol=1e-5)
    assert not products.times(D)[7].any() and not products.t_times(E)[11].any()


def test_randomized_svd_of_weighted_interactions():
    # Ratings 1-5 on a rank-3 preference pattern, 30 % observed: singular values 288, 127, 97, then
    # 69 -- separated, so the randomised SVD must match the exact one closely.
    rng = np.random.default_rng(2)
    prefs = (rng.standard_normal((400, 3)) * [6, 4, 2]) @ rng.standard_normal((3, 250))
    observed = rng.random((400, 250)) < 0.3
    X = sp.csr_matrix(np.where(observed, np.clip(np.round(prefs + 3), 1, 5), 0.0))
    u, s_exact, vt = np.linalg.svd(X.toarray())
    for seed in range(3):
        U, s, Vt = randomized_svd(X, 3, seed=seed)
        assert np.allclose(s, s_exact[:3], rtol=1e-5)
        assert np.allclose(U.T @ U, np.eye(3), atol=1e-4) and np.allclose(Vt @ Vt.T, np.eye(3), atol=1e-4)
        exact = (u[:, :3] * s_exact[:3]) @ vt[:3]
        assert np.linalg.norm((U * s) @ Vt - exact) < 1e-3 * np.linalg.norm(exact)


def test_svd_pq_codes_shrink_the_rank_to_the_memory_budget(monkeypatch):
    import urecjpq_plugin.codes as codes_module

    X = _communities()
    # Room for rank 8 + oversampling only: rank 8 = 2 * M is kept ...
    monkeypatch.setattr(codes_module, "SVD_PQ_BYTES", 8 * (300 + 240) * (8 + 10))
    assert all(torch.equal(a, b) for a, b in zip(svd_pq_codes(X, 4, 8, 1, rank=16), svd_pq_codes(X, 4, 8, 1, rank=8)))
    # ... and below 2 * M components it is RecJPQ's one component per split.
    monkeypatch.setattr(codes_module, "SVD_PQ_BYTES", 8 * (300 + 240) * (7 + 10))
    assert all(torch.equal(a, b) for a, b in zip(svd_pq_codes(X, 4, 8, 1, rank=16), svd_codes(X, 4, 8, 1)))


def test_weighted_product_quantiser_puts_its_centroids_where_the_weight_is():
    from urecjpq_plugin.pq import ProductQuantizer

    x = torch.linspace(0, 1, 1000).unsqueeze(1)
    weights = (x[:, 0] >= 0.5).double()  # only the upper half counts
    plain = ProductQuantizer(1, 1, 8, seed=0).train(x).centroids
    weighted = ProductQuantizer(1, 1, 8, seed=0).train(x, weights).centroids
    assert plain.min() < 0.4  # unweighted k-means covers the whole line
    assert weighted.min() >= 0.5


@pytest.mark.parametrize("bad", [np.full(10, -1.0), np.zeros(10), np.full(9, 1.0), np.full(10, np.inf)])
def test_product_quantiser_refuses_bad_weights(bad):
    from urecjpq_plugin.config import JPQConfigError
    from urecjpq_plugin.pq import ProductQuantizer

    with pytest.raises(JPQConfigError, match="weights"):
        ProductQuantizer(2, 1, 4).train(torch.randn(10, 2), torch.from_numpy(bad))


def test_degree_weighted_svd_pq_codes_fit_popular_items_closer():
    """Weighted by degree, the k-means serves the often-seen items: their directions are reconstructed better
    by the means of the items sharing their sub-ids (what training from the codes can at best start from)."""
    rng = np.random.default_rng(0)
    n_users, n_items, M, ksub = 600, 400, 4, 16
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8  # a long tail
    rows = np.repeat(np.arange(n_users), 8)
    cols = rng.choice(n_items, size=rows.size, p=popularity / popularity.sum())
    X = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_users, n_items))
    X.data[:] = 1.0
    degree = np.asarray(X.sum(axis=0)).ravel()
    head = np.argsort(-degree)[:40]
    _, _, Vt = randomized_svd(X.astype(np.float32), 16, 0)
    V = Vt.T / np.maximum(np.linalg.norm(Vt.T, axis=1, keepdims=True), 1e-12)

    def head_error(item_codes):
        codes, err = item_codes.numpy().astype(int), 0.0
        for k in range(M):
            part = V[:, k * 4:(k + 1) * 4]
            means = np.zeros((ksub, 4))
            np.add.at(means, codes[:, k], part)
            means /= np.maximum(np.bincount(codes[:, k], minlength=ksub), 1)[:, None]
            err += ((part[head] - means[codes[head, k]]) ** 2).sum()
        return err

    plain = svd_pq_codes(X, M, ksub, 0, 16, unit_rows=True)[1]
    assert torch.equal(plain, svd_pq_codes(X, M, ksub, 0, 16, unit_rows=True, degree_weight=0.0)[1])
    weighted = svd_pq_codes(X, M, ksub, 0, 16, unit_rows=True, degree_weight=1.0)[1]
    assert head_error(weighted) < head_error(plain)

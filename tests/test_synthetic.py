"""The synthetic generator behind `urecjpq bench-scale`: shapes, determinism, held-out split, structure."""

import numpy as np
import pytest

from urecjpq_bench.synthetic import SyntheticConfigError, generate
from urecjpq_plugin.config import URecJPQError


@pytest.fixture(scope="module")
def data():
    return generate(3000, 800, per_user=8, n_clusters=16, seed=5, chunk=1000)  # several chunks


def test_shapes_and_dtypes(data):
    assert data.indptr.shape == (3001,) and data.indptr[0] == 0 and data.indptr[-1] == data.nnz
    assert np.all(np.diff(data.indptr) >= 0)
    assert data.items.dtype == np.int32 and data.items.min() >= 0 and data.items.max() < 800
    assert data.test_users.shape == data.test_items.shape
    csr = data.train_csr()
    assert csr.shape == (3000, 800) and csr.nnz == data.nnz
    # No duplicate (user, item) pairs in training, items sorted within a user.
    for u in range(0, 3000, 97):
        row = data.user_items(u)
        assert np.all(np.diff(row) > 0)
    # At most per_user distinct draws per user, one of which may be held out.
    assert np.diff(data.indptr).max() <= 8


def test_held_out_split(data):
    counts = np.diff(data.indptr)
    assert np.all(np.diff(data.test_users) > 0)  # one test item per test user
    assert np.all(counts[data.test_users] >= 1)  # test users keep at least one training item
    for u, i in zip(data.test_users[::37], data.test_items[::37]):
        assert i not in data.user_items(u)
    # Users missing from the test set drew one distinct item only.
    no_test = np.setdiff1d(np.arange(3000), data.test_users)
    assert np.all(counts[no_test] == 1) if len(no_test) else True
    assert len(data.test_users) > 0.9 * 3000


def test_deterministic_per_seed():
    a, b = generate(500, 300, seed=11, chunk=128), generate(500, 300, seed=11, chunk=128)
    c = generate(500, 300, seed=12, chunk=128)
    for key in ("indptr", "items", "test_users", "test_items", "item_cluster"):
        assert np.array_equal(getattr(a, key), getattr(b, key))
    assert not np.array_equal(a.items, c.items)


def test_structure_is_there_to_learn(data):
    users = np.repeat(np.arange(data.n_users), np.diff(data.indptr))
    same = (data.item_cluster[data.items] == data.user_cluster[users]).mean()
    # Chance is ~1/16; most draws come from the user's own cluster.
    assert same > 0.4
    held_same = (data.item_cluster[data.test_items] == data.user_cluster[data.test_users]).mean()
    assert held_same > 0.4


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"n_users": 1, "n_items": 10}, "n_users"),
        ({"n_users": 10, "n_items": 10, "per_user": 0}, "per_user"),
        ({"n_users": 10, "n_items": 10, "n_clusters": 11}, "n_clusters"),
        ({"n_users": 10, "n_items": 10, "n_clusters": 2, "in_cluster": 1.5}, "in_cluster"),
    ],
)
def test_bad_parameters_are_one_line_errors(kwargs, word):
    with pytest.raises(SyntheticConfigError, match=word) as err:
        generate(**kwargs)
    assert isinstance(err.value, URecJPQError) and "\n" not in str(err.value)


def test_svd_codes_do_not_depend_on_the_chunk_size(monkeypatch):
    """The SVD draws, multiplies and sums in row blocks (memory at 10^7 IDs); blocks must not change codes."""
    from urecjpq_plugin import codes, rsvd

    X = generate(3000, 2000, per_user=8, n_clusters=16, seed=1).train_csr()
    whole = codes.svd_codes(X, 8, 256, 0)
    for name, rows in (("_GRAM_ROWS", 700), ("_MATMUL_ROWS", 300), ("_DRAW_ROWS", 500)):
        monkeypatch.setattr(rsvd, name, rows)
    for ref, chunked in zip(whole, codes.svd_codes(X, 8, 256, 0)):
        assert ref.dtype == chunked.dtype and ref.shape == chunked.shape
        assert (ref == chunked).float().mean() > 0.99
        assert (ref.int() - chunked.int()).abs().max() <= 1

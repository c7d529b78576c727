"""Each RecBole compatibility shim on its own (urecjpq_plugin.hosts.recbole.compat).

The shims are installed only on stacks that need them (numpy 2, scipy >= 1.13, pandas 3, no ray);
these tests call the stand-ins directly, so they check the same behaviour on the pinned CI stack.
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from urecjpq_plugin.config import URecJPQError
from urecjpq_plugin.hosts.recbole import compat


# -- scipy: dok_matrix._update ----------------------------------------------------------------------
def test_dok_update_equals_item_by_item_build():
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 50
    rows = rng.integers(0, n_users, 200)
    cols = rng.integers(0, n_items, 200) + n_users
    # RecBole's LightGCN: numpy-int keys, both directions, value 1, one bulk call.
    data = dict(zip(zip(rows, cols), [1] * len(rows)))
    data.update(dict(zip(zip(cols, rows), [1] * len(rows))))
    n = n_users + n_items

    bulk = sp.dok_matrix((n, n), dtype=np.float32)
    compat.dok_update(bulk, data)
    one_by_one = sp.dok_matrix((n, n), dtype=np.float32)
    for (i, j), v in data.items():
        one_by_one[int(i), int(j)] = v

    assert bulk.nnz == one_by_one.nnz == len(data)
    assert (bulk.tocsr() != one_by_one.tocsr()).nnz == 0
    # What RecBole computes next: degrees and the normalised adjacency.
    np.testing.assert_array_equal(np.asarray((bulk > 0).sum(axis=1)), np.asarray((one_by_one > 0).sum(axis=1)))
    d = sp.diags(np.power(np.asarray((bulk > 0).sum(axis=1)).ravel() + 1e-7, -0.5))
    np.testing.assert_allclose((d * bulk * d).toarray(), (d * one_by_one * d).toarray())


def test_dok_update_adds_to_existing_entries():
    m = sp.dok_matrix((3, 3), dtype=np.float32)
    m[0, 0] = 5
    compat.dok_update(m, {(1, 2): 1.0, (0, 0): 2.0})
    np.testing.assert_array_equal(m.toarray(), [[2, 0, 0], [0, 0, 1], [0, 0, 0]])


# -- ray stand-in -----------------------------------------------------------------------------------
def test_ray_stand_in_imports_and_refuses_use_in_one_line(monkeypatch):
    for name, module in compat.ray_stand_in().items():
        monkeypatch.setitem(sys.modules, name, module)
    from ray import tune  # what recbole.quick_start does at import time

    assert importlib.import_module("ray.tune") is tune
    with pytest.raises(URecJPQError) as err:
        tune.report(recall=0.1)
    message = str(err.value)
    assert "\n" not in message and "pip install ray" in message and "ray.tune.report" in message
    with pytest.raises(URecJPQError, match="pip install ray"):
        sys.modules["ray"].init()
    assert not hasattr(tune, "__file__")  # introspection gets AttributeError, not the error above


# -- Python 3.12: distutils.version.LooseVersion ----------------------------------------------------
VERSION_PAIRS = [("2.11.0+cu130", "1.8.0"), ("1.10.0", "1.9"), ("1.8.0", "1.8.0"), ("1.8", "1.8.0"),
                 ("0.4.1", "0.10"), ("1.8.0a1", "1.8.0b2")]


def test_loose_version_orders_like_distutils():
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from distutils.version import LooseVersion as Reference  # absent on Python >= 3.12
    except ImportError:
        Reference = None
    L = compat.LooseVersion
    for a, b in VERSION_PAIRS:
        got = (L(a) < L(b), L(a) == L(b), L(a) > L(b), L(a) <= b, L(a) >= b)
        if Reference is not None and Reference is not L:
            ra, rb = Reference(a), Reference(b)
            assert got == (ra < rb, ra == rb, ra > rb, ra <= rb, ra >= rb), (a, b)
    assert L("2.11.0+cu130") > L("1.8.0") and L("1.10.0") > "1.9" and not L("1.8.0") < "1.8.0"


def test_distutils_stand_in_serves_thops_import(monkeypatch):
    for name, module in compat.distutils_stand_in().items():
        monkeypatch.setitem(sys.modules, name, module)
    from distutils.version import LooseVersion  # thop/profile.py's first line

    assert LooseVersion is compat.LooseVersion and LooseVersion("2.0") >= LooseVersion("1.8.0")


# -- numpy 2 ----------------------------------------------------------------------------------------
def test_numpy1_aliases_come_from_names_numpy2_has(monkeypatch):
    for alias in compat.NUMPY1_ALIASES:
        monkeypatch.setattr(np, alias, None, raising=False)
    compat.set_numpy1_aliases()
    assert np.float is np.float64 and np.long is np.int_ and np.bool is np.bool_ and np.str is np.str_
    assert np.zeros(2, dtype=np.float).dtype == np.float64  # RecBole's metrics use np.float


# -- pandas 3 ---------------------------------------------------------------------------------------
def test_fill_nan_fills_each_feature_type():
    ft = pytest.importorskip("recbole.utils").FeatureType

    class FakeDataset:
        feat_name_list = ["item_feat"]
        field2type = {"tok": ft.TOKEN, "num": ft.FLOAT, "seq": ft.FLOAT_SEQ}

    ds = FakeDataset()
    ds.item_feat = pd.DataFrame({
        "tok": [1.0, np.nan, 3.0], "num": [1.0, np.nan, 3.0], "seq": [np.array([0.5]), np.nan, np.array([1.0, 2.0])],
    })
    compat.fill_nan(ds)
    assert ds.item_feat["tok"].tolist() == [1.0, 0.0, 3.0]
    assert ds.item_feat["num"].tolist() == [1.0, 2.0, 3.0]
    empty = ds.item_feat["seq"].iloc[1]
    assert isinstance(empty, np.ndarray) and empty.size == 0 and empty.dtype == np.float64


def test_read_csv_fills_missing_sequences_only(tmp_path):
    path = tmp_path / "x.item"
    path.write_text("item_id:token\tclass:token_seq\tyear:float\n1\ta b\t\n2\t\t1990\n")
    df = compat.read_csv_filling_seq(pd.read_csv)(path, delimiter="\t", dtype=str)
    assert df["class:token_seq"].tolist() == ["a b", ""]
    assert df["year:float"].isna().tolist() == [True, False]


def test_agg_len_per_row_and_other_functions_unchanged():
    s = pd.Series([np.array([1, 2]), np.array([3]), np.array([], dtype=int)])
    agg = compat.agg_len_per_row(pd.Series.agg)
    assert agg(s, len).tolist() == [2, 1, 0]
    np.testing.assert_array_equal(agg(s, np.concatenate), [1, 2, 3])
    assert agg(pd.Series([1, 2, 3]), "sum") == 6


def test_pandas2_semantics_are_scoped_and_nest():
    original_agg, original_read_csv = pd.Series.agg, pd.read_csv
    seen = []

    @compat.with_pandas2_semantics
    def outer():
        inner()
        seen.append(pd.Series([[1, 2], [3]]).agg(len).tolist())

    @compat.with_pandas2_semantics
    def inner():
        seen.append(pd.Series([[1, 2, 3]]).agg(len).tolist())

    outer()
    assert seen == [[3], [2, 1]]
    assert pd.Series.agg is original_agg and pd.read_csv is original_read_csv


def test_apply_is_idempotent_and_lets_quick_start_import():
    pytest.importorskip("recbole")
    first = compat.apply()
    assert compat.apply() == first
    assert set(first) <= {"ray stand-in", "distutils.version stand-in", "dok_matrix._update", "numpy 1 aliases", "Dataset._fill_nan",
                          "pandas 2 semantics while loading datasets"}
    importlib.import_module("recbole.quick_start")
    assert hasattr(sp.dok_matrix, "_update")


def test_remove_takes_every_shim_out(monkeypatch):
    """Each shim forced on (this stack needs none), then remove(): every attribute and sys.modules entry is
    the very object it was before."""
    pytest.importorskip("recbole")
    from recbole.config import configurator
    from recbole.data.dataset import dataset

    compat.remove()  # whatever an earlier test applied
    for check in ("_ray_missing", "_distutils_missing", "_dok_lacks_update", "_numpy_lacks_float_",
                  "_pandas_chained_fillna_is_lost"):
        monkeypatch.setattr(compat, check, lambda: True)
    names = ("ray", "ray.tune", "distutils", "distutils.version")
    modules = {name: sys.modules.get(name) for name in names}
    attrs = {(sp.dok_matrix, "_update"): getattr(sp.dok_matrix, "_update", None),
             (configurator.Config, "compatibility_settings"): configurator.Config.compatibility_settings,
             (dataset.Dataset, "_fill_nan"): dataset.Dataset._fill_nan,
             (dataset.Dataset, "_from_scratch"): dataset.Dataset._from_scratch}
    applied = compat.apply()
    assert len(applied) == 6 and sp.dok_matrix._update is compat.dok_update
    assert isinstance(sys.modules["ray"], compat._MissingPackage) and dataset.Dataset._fill_nan is compat.fill_nan
    compat.remove()
    assert all(sys.modules.get(name) is module for name, module in modules.items())
    assert all(getattr(owner, name, None) is value for (owner, name), value in attrs.items())
    monkeypatch.undo()
    assert compat.apply() == []  # on this stack: nothing needed again

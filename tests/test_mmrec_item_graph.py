"""DAMRS's item_graph_dict_<k>.npy, built from the training split (no MMRec needed)."""

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from urecjpq_plugin.hosts.mmrec import compat as mmrec_compat


def training_matrix(seed=0, users=40, items=25):
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < 0.15).astype(np.float32)
    dense[3, 7] = 2.0  # a repeated interaction counts once
    return sp.csr_matrix(dense)


def shared_users(R):
    dense = (R.toarray() > 0).astype(int)
    shared = dense.T @ dense
    np.fill_diagonal(shared, 0)
    return shared


def test_item_graph_matches_brute_force_with_threshold_and_top_k():
    R = training_matrix()
    shared = shared_users(R)
    graph = mmrec_compat.item_graph_dict(R, top=3)
    assert sorted(graph) == list(range(R.shape[1]))  # every item is a key, as DAMRS indexes them
    for item, (neighbours, weights) in graph.items():
        eligible = np.flatnonzero(shared[item] >= 2)
        assert len(neighbours) == min(3, len(eligible))
        assert item not in neighbours  # DAMRS adds the self-loop itself
        assert weights == [float(shared[item, j]) for j in neighbours]
        assert weights == sorted(weights, reverse=True)
        if len(neighbours) == 3 and len(eligible) > 3:
            assert min(weights) >= np.sort(shared[item, eligible])[-3]
    assert any(len(n) for n, _ in graph.values())  # the fixture does have pairs over the threshold


def test_top_k_comes_from_the_file_name():
    assert mmrec_compat.item_graph_top("item_graph_dict_2.npy") == 2
    assert mmrec_compat.item_graph_top("/data/x/item_graph_dict_10.npy") == 10
    assert mmrec_compat.item_graph_top("my_graph.npy") == mmrec_compat.ITEM_GRAPH_DEFAULT_TOP


class Config(dict):
    def __getitem__(self, key):
        return self.get(key)


class Loader:
    def __init__(self, R):
        self.R = R
        self.calls = 0

    def inter_matrix(self, form="coo"):
        self.calls += 1
        return self.R.asformat(form)


def test_ensure_item_graph_writes_what_damrs_loads_once_outside_the_users_data(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("URECJPQ_CACHE", str(tmp_path / "cache"))
    R = training_matrix(1)
    (tmp_path / "toy").mkdir()
    config = Config(data_path=f"{tmp_path}/", dataset="toy", item_graph_dict_file="item_graph_dict_2.npy")
    loader = Loader(R)
    path = mmrec_compat.ensure_item_graph(config, loader)
    assert path.startswith(str(tmp_path / "cache")) and path.endswith("item_graph_dict_2.npy")
    assert not list((tmp_path / "toy").iterdir())  # the user's dataset folder is left as it was
    # DAMRS's own read: os.path.join(dataset folder, config's file name), which the absolute path wins
    loaded = np.load(os.path.join(str(tmp_path / "toy"), config["item_graph_dict_file"]), allow_pickle=True).item()
    assert loaded == mmrec_compat.item_graph_dict(R, top=2)
    fresh = Config(data_path=f"{tmp_path}/", dataset="toy", item_graph_dict_file="item_graph_dict_2.npy")
    assert mmrec_compat.ensure_item_graph(fresh, loader) == path  # reused from the cache, not rebuilt
    assert [p.name for p in Path(path).parent.iterdir()] == ["item_graph_dict_2.npy"]  # no temp file left
    # A dataset that ships its own file keeps it.
    own = tmp_path / "toy" / "item_graph_dict_2.npy"
    np.save(own, {0: [1]}, allow_pickle=True)
    assert mmrec_compat.ensure_item_graph(Config(data_path=f"{tmp_path}/", dataset="toy",
                                                 item_graph_dict_file="item_graph_dict_2.npy"), loader) == str(own)

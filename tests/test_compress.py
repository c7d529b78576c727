"""Post-hoc compression (``urecjpq compress``) and RecBole full-sort through PQ scoring."""

from __future__ import annotations

import importlib.util
import os
import re

import pytest
import torch

from torch import nn

from urecjpq_plugin import JPQConfigError, URecJPQError, jpq_state_dict, load_jpq, unload_jpq
from urecjpq_plugin.compress import CompressError, quantize_model, quantize_table
from urecjpq_plugin.jpq import JPQEmbedding
from urecjpq_plugin.pq import ProductQuantizer, relative_error
from tests.conftest import entry_point


def main(argv):
    from urecjpq_plugin.hosts.recbole.compress import main as compress_main

    return compress_main(argv)


def test_product_quantizer_round_trips_a_product_table_and_reports_the_norm_ratio_error():
    torch.manual_seed(0)
    M, ksub, d = 4, 16, 16
    centroids = torch.randn(M, ksub, d // M)
    codes = torch.stack([torch.randperm(400) % ksub for _ in range(M)], dim=1)
    table = torch.cat([centroids[k, codes[:, k]] for k in range(M)], dim=1)
    pq = ProductQuantizer(d, M, ksub, seed=0).train(table)
    assert pq.centroids.shape == (M, ksub, d // M) and pq.encode(table).shape == (400, M)
    torch.testing.assert_close(pq.decode(pq.encode(table)), table, rtol=0, atol=0)
    assert pq.relative_error(table) == 0.0
    noisy = table + 0.3 * torch.randn_like(table)
    by_hand = ((pq.decode(pq.encode(noisy)) - noisy).norm() / noisy.norm()).item()  # not squared
    assert pq.relative_error(noisy) == pytest.approx(by_hand, rel=1e-6) and 0 < by_hand < 1
    assert relative_error(noisy, noisy) == 0.0


def test_product_quantizer_refuses_bad_input_in_one_line():
    with pytest.raises(JPQConfigError, match="d=10 should be a multiple of M=4"):
        ProductQuantizer(10, 4, 16)
    pq = ProductQuantizer(8, 2, 4)
    with pytest.raises(JPQConfigError, match="not trained; call train"):
        pq.encode(torch.randn(5, 8))
    with pytest.raises(JPQConfigError, match=r"vectors have shape \(5, 6\); this quantiser takes \[N, 8\]"):
        pq.train(torch.randn(5, 6))


class Trained(nn.Module):
    def __init__(self):
        super().__init__()
        self.user_embedding = nn.Embedding(120, 16, padding_idx=0)
        self.item_vectors = nn.Parameter(torch.randn(300, 16))

    def forward(self, u, i):
        return (self.user_embedding(u) * self.item_vectors[i]).sum(-1)


def test_quantize_model_swaps_the_kmeans_quantisation_in_like_apply_jpq():
    torch.manual_seed(0)
    model = Trained()
    tables = {"user": model.user_embedding.weight.detach().clone(), "item": model.item_vectors.detach().clone()}
    report, lines = quantize_model(model, {"user": 120, "item": 300}, M=4, ksub=16, seed=3, iters=5)
    assert report.code_assign == "kmeans" and len(lines) == 2 and all("relative reconstruction error" in x for x in lines)
    codes, centroids = quantize_table(tables["item"], 4, 16, seed=3, iters=5)
    assert torch.equal(model.item_vectors_jpq.codes, codes)
    decoded = JPQEmbedding.from_centroids(codes, centroids).weight.detach()
    torch.testing.assert_close(model.item_vectors, decoded)
    assert f"{relative_error(tables['item'], decoded):.3f}" in lines[1]
    assert torch.equal(model.user_embedding.weight[0], torch.zeros(16))  # padding row stays zero
    u, i = torch.arange(1, 9), torch.arange(8)
    state = jpq_state_dict(model)
    twin = Trained()
    load_jpq(twin, state)
    torch.testing.assert_close(twin(u, i), model(u, i), rtol=0, atol=0)
    expected = model(u, i).detach()
    unload_jpq(model)
    assert type(model) is Trained and isinstance(model.item_vectors, nn.Parameter)
    torch.testing.assert_close(model(u, i), expected, rtol=0, atol=0)


@pytest.mark.parametrize("n,d,M,ksub,padding_idx", [(16, 8, 2, 16, None), (500, 32, 4, 16, None), (300, 16, 8, 256, 0)])
def test_table_built_from_centroids_is_recovered_exactly(n, d, M, ksub, padding_idx):
    torch.manual_seed(n)
    codes = torch.stack([torch.randperm(n) % ksub for _ in range(M)], dim=1)  # every sub-id used
    source = JPQEmbedding(codes, ksub, d, padding_idx)
    with torch.no_grad():
        source.sub_embeddings.normal_()
    table = source.weight.detach()
    got_codes, centroids = quantize_table(table, M, ksub, seed=0, padding_idx=padding_idx)
    assert got_codes.dtype == source.codes.dtype and centroids.shape == (M, ksub, d // M)
    rebuilt = JPQEmbedding.from_centroids(got_codes, centroids, padding_idx).weight.detach()
    torch.testing.assert_close(rebuilt, table, rtol=0, atol=0)


def test_trained_like_table_gets_close_kmeans_quantisation():
    torch.manual_seed(0)
    table = torch.randn(800, 16)
    codes, centroids = quantize_table(table, 4, 32, seed=0, iters=10)
    rebuilt = JPQEmbedding.from_centroids(codes, centroids).weight.detach()
    err = ((rebuilt - table).norm() / table.norm()).item()
    baseline = JPQEmbedding.from_centroids(torch.randint(0, 32, (800, 4)), centroids).weight.detach()
    assert err < 0.7 * ((baseline - table).norm() / table.norm()).item()  # far better than random codes


# -- RecBole (ml-100k, BPR, 1 epoch) ----------------------------------------------------------
needs_recbole = pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="RecBole not installed")


def _config(tmp_path, **extra):
    from recbole.config import Config

    from urecjpq_plugin.hosts.recbole.cli import shipped_data_path

    base = {
        "data_path": shipped_data_path("ml-100k"),
        "epochs": 1,
        "show_progress": False,
        "checkpoint_dir": str(tmp_path / "ck"),
        "topk": [10, 20],
        "metrics": ["Recall", "NDCG"],
        "valid_metric": "NDCG@20",
        "eval_batch_size": 40960,
        "state": "WARNING",
    }
    return Config(model="BPR", dataset="ml-100k", config_dict={**base, **extra})


def _train(config, saved=True):
    from recbole.data import create_dataset, data_preparation
    from recbole.quick_start import quick_start
    from recbole.utils import get_trainer, init_logger, init_seed

    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = quick_start.get_model(config["model"])(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train, None, saved=saved, show_progress=False)  # no validation: 1 epoch, keep it short
    return trainer, model, test


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An uncompressed BPR checkpoint (1 epoch), trained once for the module."""
    from urecjpq_plugin.hosts.recbole import hook as host

    host.activate()
    tmp_path = tmp_path_factory.mktemp("bpr")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # RecBole writes ./log, ./log_tensorboard
    try:
        trainer, _, _ = _train(_config(tmp_path))
    finally:
        os.chdir(cwd)
    return tmp_path, trainer.saved_model_file


@needs_recbole
def test_pq_full_sort_gives_the_same_metrics_as_decode_then_matmul(tmp_path, monkeypatch):
    from urecjpq_plugin.hosts.recbole import hook as host
    from urecjpq_plugin.hosts.recbole.topk import install_pq_full_sort

    host.activate()
    monkeypatch.chdir(tmp_path)
    trainer, model, test = _train(_config(tmp_path, jpq=True, jpq_code_assign="random"), saved=False)
    model.__dict__.pop("full_sort_predict", None)  # the class's own path, even if the builder installed PQ
    before = trainer.evaluate(test, load_best_model=False)
    assert install_pq_full_sort(model) and install_pq_full_sort(model)  # idempotent
    after = trainer.evaluate(test, load_best_model=False)
    assert before.keys() == after.keys()
    for key in before:
        assert after[key] == pytest.approx(before[key], abs=1e-4), key


def test_install_pq_full_sort_leaves_uncompressed_and_unmapped_models_alone():
    from torch import nn

    from urecjpq_plugin.hosts.recbole.topk import install_pq_full_sort

    assert install_pq_full_sort(nn.Linear(2, 2)) is False


@needs_recbole
def test_compress_checkpoint_loads_with_the_plugin_and_keeps_other_weights(trained, tmp_path, monkeypatch, capsys):
    from urecjpq_plugin.hosts.recbole import hook as host

    _, ckpt = trained
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "bpr-jpq.pth")
    assert main([ckpt, "--out", out, "--M", "4", "--ksub", "16"]) == 0
    assert "relative reconstruction error" in capsys.readouterr().out
    source = torch.load(ckpt, weights_only=False)["state_dict"]
    config, model, _, _, _, _ = host.load_data_and_model(out)
    assert config["jpq"] and config["jpq_M"] == 4 and config["jpq_ksub"] == 16
    for name in ("user_embedding", "item_embedding"):
        table = getattr(model, name)
        assert isinstance(table, JPQEmbedding) and table.M == 4 and table.ksub == 16
        codes, centroids = quantize_table(source[f"{name}.weight"], 4, 16, seed=config["seed"])
        assert torch.equal(table.codes, codes)  # load_state_dict overwrote the builder's codes
        torch.testing.assert_close(table.sub_embeddings.detach(), centroids)
    assert os.path.getsize(out) < os.path.getsize(ckpt)
    # Refusals: an existing output is never touched; a JPQ checkpoint is not compressed again.
    written = open(out, "rb").read()
    with pytest.raises(CompressError, match="already exists"):
        main([ckpt, "--out", out])
    assert open(out, "rb").read() == written
    with pytest.raises(CompressError, match="already JPQ"):
        main([out, "--out", str(tmp_path / "twice.pth")])
    with pytest.raises(URecJPQError, match="does not exist"):
        main([str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x.pth")])
    (tmp_path / "a_folder").mkdir()
    with pytest.raises(URecJPQError, match="is a directory"):
        main([str(tmp_path / "a_folder"), "--out", str(tmp_path / "x.pth")])
    assert not (tmp_path / "twice.pth").exists() and not (tmp_path / "x.pth").exists()


@needs_recbole
def test_compress_with_finetune_runs_from_the_command_line(trained, tmp_path):
    # A fresh process, as a user runs it: no Config was built there, so RecBole's numpy aliases
    # (np.float in its metrics) come from the plugin; validation runs every epoch.
    import subprocess

    _, ckpt = trained
    out = tmp_path / "tuned.pth"
    done = subprocess.run([entry_point("urecjpq"), "compress", ckpt, "--out", str(out), "--M", "4", "--ksub", "16",
                           "--finetune-epochs", "1"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.is_file()


@needs_recbole
def test_compress_with_finetune_writes_a_trained_checkpoint(trained, tmp_path, monkeypatch):
    _, ckpt = trained
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "tuned.pth")
    main([ckpt, "--out", out, "--M", "4", "--ksub", "16", "--finetune-epochs", "1"])
    saved = torch.load(out, weights_only=False)
    assert "optimizer" in saved  # written by RecBole's trainer
    trained_items = torch.load(ckpt, weights_only=False)["state_dict"]["item_embedding.weight"]
    posthoc, _ = quantize_table(trained_items, 4, 16, seed=saved["config"]["seed"])
    assert torch.equal(saved["state_dict"]["item_embedding.codes"], posthoc)  # codes stay fixed while tuning
    assert saved["config"]["jpq"] and "item_embedding.sub_embeddings" in saved["state_dict"]


@needs_recbole
def test_finetune_keeps_the_compressed_start_when_no_epoch_validates_better(trained, tmp_path, monkeypatch):
    # A learning rate that wrecks the model in one epoch: RecBole alone would save that epoch (its first
    # validation is the first best); the start, validated first, must be what is written.
    _, ckpt = trained
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "tuned.pth")
    main([ckpt, "--out", out, "--M", "4", "--ksub", "16", "--finetune-epochs", "1", "--finetune-lr", "1000"])
    saved = torch.load(out, weights_only=False)
    assert saved["epoch"] == -1 and saved["config"]["learning_rate"] == 1000
    trained_items = torch.load(ckpt, weights_only=False)["state_dict"]["item_embedding.weight"]
    _, centroids = quantize_table(trained_items, 4, 16, seed=saved["config"]["seed"])
    torch.testing.assert_close(saved["state_dict"]["item_embedding.sub_embeddings"], centroids)
    with pytest.raises(CompressError, match="finetune-lr"):
        main([ckpt, "--out", str(tmp_path / "bad.pth"), "--finetune-epochs", "1", "--finetune-lr", "0"])
    assert not (tmp_path / "bad.pth").exists()


@needs_recbole
def test_compress_defaults_to_the_plugins_M(trained, tmp_path, monkeypatch):
    from urecjpq_plugin.config import auto_M
    from urecjpq_plugin.hosts.recbole.compress import parse_args

    assert parse_args(["x.pth", "--out", "y.pth"]).M == "auto"
    _, ckpt = trained
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "auto.pth")
    main([ckpt, "--out", out, "--ksub", "16"])
    saved = torch.load(out, weights_only=False)
    dim = saved["state_dict"]["item_embedding.sub_embeddings"].shape
    assert saved["config"]["jpq_M"] == dim[0] == auto_M(dim[0] * dim[2])  # resolved from the table width


@pytest.mark.parametrize("case, message", [
    ("out exists", "--out '.*out.pth' already exists; choose a new path"),
    ("already jpq", "is already JPQ-compressed \\(user_embedding.sub_embeddings\\); give one trained without jpq"),
    ("finetune", "--finetune-epochs / --finetune-lr are RecBole-only"),
    ("features", "--targets \\['image'\\] are not ID tables"),
    ("missing", "'.*nowhere.pth' does not exist"),
    ("no mmrec", "is not MMRec's src/ \\(it needs main.py and configs/\\)"),
])
def test_mmrec_compress_refuses_bad_input_before_touching_mmrec(tmp_path, capsys, case, message):
    from urecjpq_plugin.cli import main as urecjpq

    checkpoint, out = tmp_path / "base.pth", tmp_path / "out.pth"
    state = {"user_embedding.weight": torch.randn(5, 8)}
    if case == "already jpq":
        state = {"user_embedding.codes": torch.zeros(5, 2, dtype=torch.uint8),
                 "user_embedding.sub_embeddings": torch.randn(2, 4, 4)}
    torch.save({"state_dict": state, "config": {"model": "BPR", "dataset": "x"}}, checkpoint)
    if case == "out exists":
        out.write_bytes(b"the user's file")
    extra = {"finetune": ["--finetune-epochs", "2"], "features": ["--targets", "image"]}.get(case, [])
    path = str(tmp_path / "nowhere.pth") if case == "missing" else str(checkpoint)
    # no MMRec checkout is needed: every refusal comes before MMRec is imported (the folder is checked last)
    assert urecjpq(["compress", "--host", "mmrec", path, "--out", str(out), "--mmrec-src", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert out.read_bytes() == b"the user's file" if case == "out exists" else not out.exists()

"""MMRec end-to-end: the launcher, the main.py patch, checkpoints and run_one against a real MMRec src/.

Runs only when env ``MMREC_SRC`` points to MMRec's ``src/`` (and MMRec's dependencies import in
this Python); otherwise skipped with that reason. The ml-100k MMRec dataset is built into a temp
folder from RecBole's copy (env ``ML100K_SOURCE`` = a folder with ml-100k.inter/.item, else the
installed RecBole's), with a small deterministic stand-in text encoder, so no model download.
Each run is a subprocess (MMRec changes the working directory and global state).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PATCH = REPO / "patches" / "mmrec-main-jpq.patch"
MMREC_SRC = os.environ.get("MMREC_SRC")


def _skip_reason() -> str | None:
    if not MMREC_SRC:
        return "set MMREC_SRC to an MMRec src/ directory to run the MMRec end-to-end tests"
    if not os.path.isfile(os.path.join(MMREC_SRC, "main.py")):
        return f"MMREC_SRC={MMREC_SRC!r} has no main.py; point it to MMRec's src/"
    missing = [m for m in ("matplotlib", "pandas", "yaml", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        return f"MMRec's dependencies {missing} are not installed in this Python"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _fake_encoder(sentences):
    """Deterministic 32-d 'text features' per sentence (stands in for all-MiniLM-L6-v2)."""
    out = np.empty((len(sentences), 32), dtype=np.float32)
    for i, s in enumerate(sentences):
        out[i] = np.random.default_rng(zlib.crc32(s.encode())).standard_normal(32)
    return out


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> str:
    from urecjpq_plugin.data import mmrec_dataset as md

    source = os.environ.get("ML100K_SOURCE")
    if source is None:
        try:
            source = str(md.find_recbole_ml100k())
        except md.MMRecDatasetError as err:
            pytest.skip(f"no ml-100k source: {err}; set ML100K_SOURCE")
    out = tmp_path_factory.mktemp("mmrec_data")
    info = md.build_mmrec_dataset(out, source_dir=source, encode=_fake_encoder)
    return info.data_path


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}


def _launcher(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "urecjpq_plugin.hosts.mmrec.cli", "--mmrec-src", MMREC_SRC, *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=_env())


def _metric(text: str, name: str) -> float:
    return float(re.findall(rf"{name}=([0-9.]+)", text)[-1])


def test_launcher_trains_saves_and_evaluates_from_checkpoint(data_path, tmp_path):
    common = ["-m", "BPR", "-d", "ml-100k", f"--data_path={data_path}", "--epochs=1", "--reg_weight=1e-4",
              f"--checkpoint_dir={tmp_path}"]
    trained = _launcher(*common, "--jpq", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    checkpoint = tmp_path / "BPR-ml-100k-jpq.pth"
    assert checkpoint.is_file()
    evaluated = _launcher(*common, f"--eval-checkpoint={checkpoint}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert _metric(evaluated.stdout, "recall@20") == pytest.approx(_metric(trained.stdout, "recall@20"), abs=1e-4)
    base = _launcher(*common, cwd=tmp_path)
    assert base.returncode == 0, base.stderr[-2000:]
    assert (tmp_path / "BPR-ml-100k-base.pth").stat().st_size > 2 * checkpoint.stat().st_size


def test_codes_from_a_trained_checkpoint_and_compress_of_it(data_path, tmp_path):
    import torch

    from urecjpq_plugin.codes import kmeans_codes

    common = ["-m", "BPR", "-d", "ml-100k", f"--data_path={data_path}", "--epochs=1", "--reg_weight=1e-4",
              f"--checkpoint_dir={tmp_path}"]
    base = _launcher(*common, cwd=tmp_path)
    assert base.returncode == 0, base.stderr[-2000:]
    trained = tmp_path / "BPR-ml-100k-base.pth"
    run = _launcher(*common, "--jpq", "--jpq_codes_from=BPR-ml-100k-base.pth", cwd=tmp_path)  # relative to here
    assert run.returncode == 0, run.stderr[-2000:]
    rows = torch.load(trained, weights_only=True)["state_dict"]["user_embedding.weight"]
    compressed = torch.load(tmp_path / "BPR-ml-100k-jpq.pth", weights_only=True)
    seed = compressed["config"]["seed"]
    assert torch.equal(compressed["state_dict"]["user_embedding.codes"], kmeans_codes(rows, 16, 256, seed=seed)[0])

    out = tmp_path / "ptq.pth"
    ptq = subprocess.run([sys.executable, "-m", "urecjpq_plugin.cli", "compress", "--host", "mmrec", str(trained),
                          "--out", str(out), "--mmrec-src", MMREC_SRC, "--data-path", data_path],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env())
    assert ptq.returncode == 0, ptq.stderr[-2000:]
    reported = float(re.findall(r"test recall@20: trained [0-9.]+, compressed ([0-9.]+)", ptq.stdout)[0])
    evaluated = _launcher(*common, f"--eval-checkpoint={out}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert _metric(evaluated.stdout, "recall@20") == pytest.approx(reported, abs=1e-4)
    again = subprocess.run([sys.executable, "-m", "urecjpq_plugin.cli", "compress", "--host", "mmrec", str(trained),
                            "--out", str(out), "--mmrec-src", MMREC_SRC], capture_output=True, text=True, env=_env())
    assert again.returncode == 2 and "already exists" in again.stderr


def test_every_grid_combination_is_compressed(data_path, tmp_path):
    run = _launcher("-m", "BPR", "-d", "ml-100k", f"--data_path={data_path}", "--epochs=1", "--jpq",
                    "--reg_weight=[0.1, 0.001]", f"--checkpoint_dir={tmp_path}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    log = run.stdout + run.stderr
    assert log.count("JPQ swapped 2 ID tables") == 2


def test_run_one_contract(data_path, tmp_path):
    code = (
        "import json, sys; from urecjpq_plugin.hosts.mmrec.hook import run_one; "
        "print('RESULT', json.dumps(run_one('VBPR', 'ml-100k', json.loads(sys.argv[1]), sys.argv[2], sys.argv[3])))"
    )
    overrides = {"data_path": data_path, "epochs": 1, "reg_weight": 1e-4, "jpq": True}
    run = subprocess.run([sys.executable, "-c", code, json.dumps(overrides), str(tmp_path), MMREC_SRC],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env())
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert set(result) == {"test_result", "trainable_params", "id_table_params", "feature_params", "jpq_tables",
                           "checkpoint", "checkpoint_bytes", "epochs_run", "seconds_per_epoch", "cpu_seconds_per_epoch",
                           "cpu_seconds_per_eval", "loss_nan_epoch", "hyper", "model"}
    assert result["loss_nan_epoch"] is None and result["model"] == "VBPR"
    assert result["cpu_seconds_per_epoch"] > 0 and result["cpu_seconds_per_eval"] > 0
    assert result["jpq_tables"] and all(t == {"M": 16, "ksub": 256} for t in result["jpq_tables"].values())
    assert result["checkpoint"] == str(tmp_path / "VBPR-ml-100k-jpq.pth")
    assert result["epochs_run"] == 1 and result["checkpoint_bytes"] == (tmp_path / "VBPR-ml-100k-jpq.pth").stat().st_size
    assert 0 < result["id_table_params"] < result["trainable_params"]
    assert "recall@20" in result["test_result"]


def test_patched_main_py_trains_and_saves(data_path, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is needed to apply the patch")
    from urecjpq_plugin.data.mmrec_dataset import install_dataset_yaml

    src = tmp_path / "src"
    shutil.copytree(MMREC_SRC, src, ignore=shutil.ignore_patterns("log", "saved", "__pycache__"))
    applied = subprocess.run(["git", "apply", "-p2", str(PATCH)], cwd=src, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    install_dataset_yaml(src)  # this copy's configs/dataset/ml-100k.yaml (skipped if identical)
    run = subprocess.run(
        [sys.executable, "main.py", "-m", "BPR", "-d", "ml-100k", "--jpq", "--epochs=1", "--reg_weight=1e-4",
         f"--data_path={data_path}", f"--checkpoint_dir={tmp_path / 'ck'}"],
        cwd=src, capture_output=True, text=True, timeout=600, env=_env(),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "ck" / "BPR-ml-100k-jpq.pth").is_file()
    bad = subprocess.run([sys.executable, "main.py", "-m", "BPR", "-d", "ml-100k", "--jpq", "--jpq_M=0"],
                         cwd=src, capture_output=True, text=True, timeout=600, env=_env())
    assert bad.returncode != 0 and "jpq_M=0 is invalid" in bad.stderr.strip().splitlines()[-1]


def test_models_that_cannot_run_stop_with_one_line(data_path, tmp_path):
    run = _launcher("-m", "MGCN", "-d", "ml-100k", f"--data_path={data_path}", "--epochs=1", "--jpq", "--cl_loss=0.01",
                    cwd=tmp_path)  # text features only; MGCN's forward reads image features unconditionally
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("urecjpq-mmrec: error: MGCN needs image and text features")
    if importlib.util.find_spec("torch_geometric") is not None:
        run = _launcher("-m", "MMGCN", "-d", "ml-100k", f"--data_path={data_path}", "--epochs=1", "--jpq",
                        "--reg_weight=1e-4", "--learning_rate=0.001", cwd=tmp_path)
        assert run.returncode == 2
        assert "never trains" in run.stderr.strip().splitlines()[-1]


USER_MODEL = '''
import torch
from torch import nn
from common.abstract_recommender import GeneralRecommender
from common.loss import BPRLoss


class MyModel(GeneralRecommender):
    """A user's model whose table names the default rule does not take."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.people = nn.Embedding(self.n_users, config["embedding_size"])
        self.things = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_items, config["embedding_size"])))
        self.loss = BPRLoss()

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u = self.people(users)
        return self.loss((u * self.things[pos]).sum(-1), (u * self.things[neg]).sum(-1))

    def full_sort_predict(self, interaction):
        return self.people(interaction[0]) @ self.things.T
'''


@pytest.fixture(scope="module")
def src_with_user_model(tmp_path_factory) -> Path:
    """A scratch copy of MMRec's src/ with one user-defined model added to models/ (nothing else changed)."""
    src = tmp_path_factory.mktemp("mmrec") / "src"
    shutil.copytree(MMREC_SRC, src, ignore=shutil.ignore_patterns("log", "saved", "__pycache__"))
    (src / "models" / "mymodel.py").write_text(USER_MODEL)
    (src / "configs" / "model" / "MyModel.yaml").write_text("embedding_size: 64\nreg_weight: [0.0]\nhyper_parameters: []\n")
    return src


@pytest.mark.parametrize("declared_by", ["none", "registry", "yaml"])
def test_user_defined_model_is_compressed_through_registry_or_yaml(declared_by, src_with_user_model, data_path, tmp_path):
    overrides = {"data_path": data_path, "epochs": 1, "jpq": True}
    register = ""
    if declared_by == "registry":
        register = "from urecjpq_plugin import register_id_tables; register_id_tables('MyModel', user=['people'], item=['things']); "
    elif declared_by == "yaml":
        overrides["jpq_tables"] = {"user": ["people"], "item": ["things"]}
    code = (f"import json, sys; {register}from urecjpq_plugin.hosts.mmrec.hook import run_one; "
            "print('RESULT', json.dumps(run_one('MyModel', 'ml-100k', json.loads(sys.argv[1]), sys.argv[2], sys.argv[3])))")
    run = subprocess.run([sys.executable, "-c", code, json.dumps(overrides), str(tmp_path), str(src_with_user_model)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env())
    if declared_by == "none":  # the default rule wants user/item in the names
        assert run.returncode != 0
        assert "model MyModel has no ID table" in run.stderr and "register_id_tables" in run.stderr
        return
    assert run.returncode == 0, run.stderr[-2000:]
    assert "JPQ swapped 2 ID tables (people[" in run.stdout + run.stderr
    result = json.loads(run.stdout.split("RESULT ", 1)[1].splitlines()[0])
    n_users, n_items, dim = 943, 1349, 64
    assert result["trainable_params"] == 2 * 256 * dim  # every sub-embedding, nothing else is trainable
    assert result["id_table_params"] == 2 * 256 * dim < (n_users + n_items) * dim
    state = __import__("torch").load(tmp_path / "MyModel-ml-100k-jpq.pth", weights_only=True)["state_dict"]
    assert {"people.codes", "things_jpq.codes"} <= set(state) and "things" not in state

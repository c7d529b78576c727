import copy
import os

import pytest

from urecjpq_plugin.inject import _REGISTRY


def recbole_data_path() -> str:
    recbole = pytest.importorskip("recbole", reason="RecBole not installed (pip install -e .[recbole])")
    return os.path.join(os.path.dirname(recbole.__file__), "dataset_example")


@pytest.fixture
def recbole_env(tmp_path, monkeypatch):
    """Activate the RecBole host and keep RecBole's ./log, ./saved inside tmp_path."""
    data_path = recbole_data_path()
    from urecjpq_plugin.hosts.recbole import hook as host

    host.activate()
    monkeypatch.chdir(tmp_path)
    return {
        "data_path": data_path,
        "checkpoint_dir": str(tmp_path / "saved"),
        "show_progress": False,
        "topk": [10, 20],
        "state": "WARNING",
        "train_batch_size": 4096,
    }


@pytest.fixture(autouse=True)
def registry():
    """Every test sees the table registry as it was and leaves it so."""
    saved = copy.deepcopy(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(saved)


def entry_point(name: str) -> str:
    """The installed console script ``name`` of this interpreter's environment (as the README runs it),
    whether or not that environment's bin/ is on PATH."""
    import shutil
    import sys

    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.path.exists(beside) else (shutil.which(name) or name)

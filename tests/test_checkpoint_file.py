"""Checkpoints are read with an allow-listed unpickler: a crafted file cannot run code on load."""

import subprocess

import pytest
import torch

from urecjpq_plugin.checkpoint_file import UntrustedCheckpointError, allowed_global, read_checkpoint_file
from tests.conftest import entry_point


class _RunsCode:
    """Unpickling this calls builtins.exec, which writes a marker file: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _crafted(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    torch.save({"config": _RunsCode(marker), "state_dict": {"item_embedding.weight": torch.zeros(3, 4)}}, path)
    return path, marker


def test_a_file_whose_pickle_runs_code_is_refused_and_runs_nothing(tmp_path):
    path, marker = _crafted(tmp_path)
    with pytest.raises(UntrustedCheckpointError, match=r"holds (__builtin__|builtins)\.exec, which no RecBole or plugin checkpoint"):
        read_checkpoint_file(path, needs=("config", "state_dict"))
    assert not marker.exists()


@pytest.mark.parametrize("command", [["compress", "{path}", "--out", "{out}"], ["export", "{path}", "--out", "{out}"]])
def test_commands_refuse_it_in_one_line(command, tmp_path):
    path, marker = _crafted(tmp_path)
    out = tmp_path / "out.pth"
    argv = [entry_point("urecjpq")] + [a.format(path=path, out=out) for a in command]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-1500:]
    assert len(done.stderr.strip().splitlines()) == 1 and "builtin__.exec" in done.stderr
    assert not marker.exists() and not out.exists()


def test_what_recbole_checkpoints_hold_is_allowed():
    for module, name in [("recbole.config.configurator", "Config"), ("recbole.utils.enum_type", "ModelType"),
                         ("yaml.loader", "FullLoader"), ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
                         ("torch", "device"), ("numpy.core.multiarray", "scalar"), ("numpy", "dtype")]:
        assert allowed_global(module, name), (module, name)
    for module, name in [("builtins", "exec"), ("builtins", "eval"), ("posix", "system"), ("os", "system"),
                         ("subprocess", "Popen"), ("builtins", "getattr"), ("torch", "load")]:
        assert not allowed_global(module, name), (module, name)

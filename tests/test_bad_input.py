"""Bad input, as a new user types it: exit code 2, one line naming the value and what is valid, and
nothing created or changed in the working folder (beyond RecBole's own log, which then ends with it)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from urecjpq_plugin.checkpoint_file import CheckpointFileError
from urecjpq_plugin.config import URecJPQError
from urecjpq_plugin.jpq import JPQEmbedding


def run_cli(args, cwd):
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("argv, says", [
    (["--model=BPRR"], "model 'BPRR' is not a RecBole model; close names: BPR"),
    (["--model=Zzzz"], "model 'Zzzz' is not a RecBole model; RecBole's models include ADMMSLIM"),
    (["--model=lightgcn"], "RecBole's name is 'LightGCN'"),
    (["--dataset=no-such-data"], "dataset 'no-such-data' is neither a folder"),
    (["--nproc=0"], "--nproc=0 is invalid; it must be 1 or more"),
    (["--nproc=-1"], "--nproc=-1 is invalid; it must be 1 or more"),
    (["--jpq", "--jpq_ksub=100000"], "jpq_ksub=100000 is invalid; it must be an integer in [2, MAX_KSUB=65536]"),
])
def test_recbole_cli_refuses_before_writing_anything(tmp_path, argv, says):
    (tmp_path / "mine.txt").write_text("keep")
    before = snapshot(tmp_path)
    proc = run_cli(["urecjpq-recbole", *argv], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("urecjpq-recbole: error: ") and says in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("argv, line", [
    (["--jpq_ksub=2000"], "jpq_ksub=2000 is larger than the 944 rows of user_embedding; a compressed table would "
                          "outgrow the original: use jpq_ksub <= 944"),
    (["--jpq_M=7"], "embedding size 64 of "),
])
def test_error_after_recbole_opened_its_log_ends_that_log(tmp_path, argv, line):
    proc = run_cli(["urecjpq-recbole", "--model=BPR", "--jpq", *argv, "--show_progress=False"], tmp_path)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"urecjpq-recbole: error: {line}"), last
    assert "Traceback" not in proc.stderr
    (log,) = (tmp_path / "log").rglob("*.log")
    assert log.read_text().strip().splitlines()[-1] == last
    assert not (tmp_path / "saved").exists()  # no checkpoint


def test_float_codes_and_bad_ksub_are_refused_by_name():
    with pytest.raises(URecJPQError, match="codes have dtype float32; give integer sub-ids"):
        JPQEmbedding(torch.full((300, 8), 0.5), 256, 64)
    with pytest.raises(URecJPQError, match=r"^ksub=0 is out of range"):
        JPQEmbedding(torch.zeros(300, 8, dtype=torch.long), 0, 64)

def test_ksub_above_a_tables_rows_is_refused_before_any_swap():
    from torch import nn

    from urecjpq_plugin import JPQConfig, apply_jpq

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.user_embedding, self.item_embedding = nn.Embedding(300, 16), nn.Embedding(10, 16)

    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(URecJPQError, match="jpq_ksub=16 is larger than the 10 rows of item_embedding; .* <= 10"):
        apply_jpq(model, JPQConfig(M=4, ksub=16, code_assign="random"), {"user": 300, "item": 10})
    assert type(model) is Tiny and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.fixture
def truncated(tmp_path):
    """A real checkpoint cut in half, as an interrupted copy leaves it."""
    whole = tmp_path / "whole.pth"
    torch.save({"state_dict": {"w": torch.randn(100, 100)}, "config": {}}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return cut


@pytest.mark.parametrize("command", [["export", "--table", "item_embedding", "--out", "x.index"],
                                     ["compress", "--out", "y.pth"]])
def test_commands_answer_a_truncated_checkpoint_in_one_line(tmp_path, truncated, command):
    before = snapshot(tmp_path)
    proc = run_cli(["urecjpq", command[0], str(truncated), *command[1:]], tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert f"{str(truncated)!r} is not a readable torch checkpoint" in line
    assert snapshot(tmp_path) == before


def test_load_data_and_model_and_mmrec_eval_answer_the_same_way(truncated):
    from urecjpq_plugin.hosts.mmrec import hook as mmrec
    from urecjpq_plugin.hosts.recbole import hook as recbole

    messages = []
    for load in (recbole.load_data_and_model, mmrec.evaluate_checkpoint):
        with pytest.raises(CheckpointFileError) as err:
            load(str(truncated))
        messages.append(str(err.value).split(";")[0])
    assert messages[0] == messages[1] and "is not a readable torch checkpoint" in messages[0]

"""Issue-22 refusals through the installed console scripts, from a fresh folder: exit 2, one line that names
the bad value, nothing created or changed."""

import subprocess

import pytest

from tests.conftest import entry_point

CASES = [
    (["urecjpq", "bench", "--threads", "0"], "--threads 0"),
    (["urecjpq", "bench", "--threads", "-1"], "--threads -1"),
    (["urecjpq", "bench", "--timeout", "0"], "--timeout 0"),
    (["urecjpq", "bench", "--out", "afile"], "afile is a file"),
    (["urecjpq", "compress", "adir", "--out", "x.pth"], "'adir' is a directory"),
    (["urecjpq", "export", "adir", "--table", "item_embedding", "--out", "x.index"], "'adir' is a directory"),
    (["urecjpq", "mmrec-data", "nope"], "--out"),
    (["urecjpq-recbole", "--model=BPR", "--jpq=True", "--jpq_Mm=8"], "jpq_Mm"),
]


@pytest.mark.parametrize("argv,named", CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_installed_commands_refuse_in_one_line_and_touch_nothing(tmp_path, argv, named):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    done = subprocess.run([entry_point(argv[0]), *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-1000:]
    assert err and named in err[-1] and err[-1].startswith(f"{argv[0]}"), err
    assert [line for line in err if "error" in line.lower()] == [err[-1]]  # one error line
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "afile").read_text() == "mine"
    assert list((tmp_path / "adir").iterdir()) == []

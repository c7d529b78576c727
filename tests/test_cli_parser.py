"""Every command's argument errors are one line with exit code 2 (no usage block)."""

import subprocess

import pytest

from tests.conftest import entry_point

BAD_ARGUMENTS = [
    (["urecjpq", "mmrec-data", "ml-100k"], "--out"),  # a required option missing
    (["urecjpq", "bench", "--no-such-option"], "--no-such-option"),
    (["urecjpq", "tables", "--ksub", "many"], "many"),
    (["urecjpq", "compress"], "required"),
    (["urecjpq-recbole", "--epochs"], "--epochs"),  # RecBole would drop it and train 300 epochs
    (["urecjpq-recbole", "--epochs", "5"], "--epochs"),
]


@pytest.mark.parametrize("argv,named", BAD_ARGUMENTS, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_argument_errors_are_one_line(argv, named):
    done = subprocess.run([entry_point(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=300)
    err = done.stderr.strip()
    assert done.returncode == 2, err
    assert len(err.splitlines()) == 1 and named in err and "usage" not in err.lower(), err

"""The README's main commands, run the way a user runs them: from a fresh working folder, with the
default (relative) output folder, only the budget made small. A broken main job fails CI."""

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_main_command() -> list[str]:
    """The last command of the README's one-line main job (after its install steps)."""
    text = README.read_text()
    block = re.search(r"Main job.*?```bash\n(.*?)\n```", text, flags=re.S).group(1)
    return shlex.split(block.strip().split("&&")[-1])


def urecjpq(args: list[str], cwd: Path, timeout: int = 900, **env_extra: str) -> subprocess.CompletedProcess:
    """Run a console script of this environment (what the README's install put on PATH)."""
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
           **env_extra}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_readme_main_command_is_urecjpq_bench():
    assert readme_main_command()[:2] == ["urecjpq", "bench"]


def test_readme_main_command_runs_with_its_default_output_folder(tmp_path):
    cmd = readme_main_command() + ["--models", "BPR", "--epochs", "1", "--no-progress"]
    proc = urecjpq(cmd, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "bench-results"
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["variant"] for r in rows) == ["base", "jpq"]
    for row in rows:
        assert row["status"] == "ok" and 0 < float(row["recall@20"]) <= 1 and float(row["ndcg@20"]) > 0
    jpq = next(r for r in rows if r["variant"] == "jpq")
    assert float(jpq["params_id_tables"]) < next(float(r["params_id_tables"]) for r in rows if r["variant"] == "base")
    for png in ("accuracy_vs_params.png", "accuracy_vs_M.png", "accuracy_vs_ksub.png", "accuracy_vs_checkpoint.png"):
        assert (out / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    assert "| BPR | uncompressed |" in proc.stdout


def test_readme_scale_command_runs_with_its_default_output_folder(tmp_path):
    cmd = ["urecjpq", "bench-scale", "--sizes", "1e4", "--max-steps", "5", "--eval-users", "50"]
    proc = urecjpq(cmd, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "bench-scale-results" / "scale.md").read_text()
    assert "failed" not in report and "| peak RSS |" in report


@pytest.mark.parametrize("out", ["rel dir/with space", "~/urecjpq-test-home-out"])
def test_bench_out_relative_with_spaces_and_home(tmp_path, out):
    home = tmp_path / "home"
    home.mkdir()
    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{(u * 7 + t) % 40}\t1\t{t}" for u in range(50) for t in range(12)]
    (data / "tiny.inter").write_text("\n".join(lines) + "\n")
    cmd = ["urecjpq", "bench", "--models", "BPR", "--epochs", "1", "--no-progress", "--dataset", "tiny", "--ksub", "16",
           "--set", f"data_path={tmp_path / 'data'}", "--out", out]
    proc = urecjpq(cmd, cwd=tmp_path, HOME=str(home))
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = home / out[2:] if out.startswith("~/") else tmp_path / out
    with open(where / "results.csv") as fh:
        assert sorted(r["status"] for r in csv.DictReader(fh)) == ["ok", "ok"]

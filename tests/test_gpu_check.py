"""benchmarks/gpu_check.sh and gpu_bench.py rehearsed where there is no GPU: one line, exit 2, nothing written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run for real")
@pytest.mark.parametrize("command", [["bash", "benchmarks/gpu_check.sh"], [sys.executable, "benchmarks/gpu_bench.py"]])
def test_gpu_check_stops_at_once_without_a_gpu(command, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "no CUDA device" in done.stderr
    assert not (tmp_path / "out").exists()

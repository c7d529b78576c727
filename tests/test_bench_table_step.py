"""benchmarks/bench_table_step.py runs and prints one row per table variant with its ratio to nn.Parameter."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_table_step.py"


def test_prints_each_variant_against_the_uncompressed_table(capsys):
    spec = importlib.util.spec_from_file_location("bench_table_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--rows", "300", "--reps", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.rsplit(maxsplit=2)[0] for line in lines[1:]]
    assert names == ["nn.Parameter (uncompressed)", "JPQ", "JPQ + split dropout 0.1",
                     "JPQ + split dropout + degree scale"]
    assert lines[1].split()[-1] == "1.00" and all(float(line.split()[-1]) > 0 for line in lines[1:])

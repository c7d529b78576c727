"""Subprocess entry of one bench run: ``python -m urecjpq_bench.child SPEC.json RESULT.json``.

Reads the spec the bench wrote, calls the host's ``run_one`` and writes its checked result. Any
exception exits non-zero with the traceback in the run's log; the bench records the run as failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from urecjpq_bench.hosts import check_result, resolve_runner, write_json


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text())
    sys.argv = [sys.argv[0]]  # RecBole parses --key=value from sys.argv; give it nothing
    run_one = resolve_runner(spec["host"])
    result = run_one(spec["model"], spec["dataset"], spec["overrides"], spec["out_dir"], **spec.get("options", {}))
    write_json(Path(result_path), check_result(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

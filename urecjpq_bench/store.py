"""The bench's results folder: one JSON per run, guarded so results are never silently overwritten.

Layout of ``--out``::

    bench.json          the settings every run in the folder shares (host, dataset, budget, seed, --set)
    runs/<run_id>.json  one finished run (spec + measurements); written atomically at the run's end
    runs/<run_id>/      the run's working folder (child log, host logs, checkpoint)
    results.csv, results.md, plots/*.png   derived from runs/*.json, rewritten after every run

Resume rule: a folder is reused only when its ``bench.json`` settings equal this invocation's; then
runs whose JSON says ``ok`` are kept and only missing (interrupted) or failed runs are run. Models
and sweep values may differ between invocations (they add runs). Different settings, or a non-empty
folder that is not a bench folder, stop with a one-line :class:`BenchFolderError` before any run.
"""

from __future__ import annotations

import json
from pathlib import Path

from urecjpq_plugin.config import URecJPQError
from urecjpq_bench.hosts import write_json

MANIFEST = "bench.json"


class BenchFolderError(URecJPQError):
    """``--out`` holds results that this invocation must not mix with or overwrite."""


def open_folder(out: Path, settings: dict) -> Path:
    """Create ``out`` or check it was made with the same ``settings``; return the runs folder."""
    if out.exists() and not out.is_dir():
        raise BenchFolderError(f"--out {out} is a file, not a folder; pass a new or empty folder for the results")
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            stored = json.loads(manifest.read_text())["settings"]
        except (ValueError, KeyError):
            raise BenchFolderError(f"--out {out}: {manifest} is unreadable; pass another --out") from None
        # JSON round-trip so tuples/lists compare equal.
        wanted = json.loads(json.dumps(settings, sort_keys=True, default=str))
        diff = [f"{k}: {wanted.get(k)!r} now, {stored.get(k)!r} there" for k in sorted(set(stored) | set(wanted))
                if stored.get(k) != wanted.get(k)]
        if diff:
            raise BenchFolderError(
                f"--out {out} holds runs made with other settings ({'; '.join(diff)}); "
                "pass another --out, or the same settings to resume"
            )
    elif out.exists() and any(out.iterdir()):
        raise BenchFolderError(f"--out {out} is not empty and holds no {MANIFEST}; pass a new or empty folder")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json(manifest, {"settings": settings})
    runs = out / "runs"
    runs.mkdir(exist_ok=True)
    return runs


def load_run(runs: Path, run_id: str) -> dict | None:
    path = runs / f"{run_id}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def save_run(runs: Path, record: dict) -> None:
    write_json(runs / f"{record['run_id']}.json", record)


def all_runs(runs: Path) -> list[dict]:
    out = []
    for path in sorted(runs.glob("*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except ValueError:
            continue
    return out

"""Per-host runners behind one contract, and the subprocess that isolates each run.

Contract (every host)::

    run_one(model: str, dataset: str, overrides: dict, out_dir: str, **options) -> dict

runs ONE training + test evaluation in the current process (the bench has already put it in a fresh
subprocess, so peak RSS is per run and a crash cannot take the bench down). ``overrides`` is a flat
host config (``jpq``, ``jpq_M``, ``jpq_ksub``, ``jpq_code_assign``, ``jpq_targets``, ``epochs``,
``stopping_step``, ``seed``, ``topk`` and any ``--set key=value``); ``out_dir`` is the run's own
folder (logs, checkpoints); ``options`` are host-specific (MMRec: ``mmrec_src``, see
:mod:`.mmrec_runner`, which adapts ``urecjpq_plugin.hosts.mmrec.hook.run_one``). It returns::

    {"metrics": {"recall@10": f, "recall@20": f, "ndcg@10": f, "ndcg@20": f},   # test split
                                                       # (or {"auc": f, "logloss": f}: CTR models)
     "epochs": int, "seconds_per_epoch": float,                               # training epochs run
     "params": {"id_tables": int, "features": int, "total": int},            # trainable
     "checkpoint_bytes": int, ...}                                            # extra keys are kept

and ``"checkpoint"``, the saved file's absolute path, where the host saved one (``--codes-from-base``
reads the uncompressed run's).

The bench adds ``peak_rss_bytes`` (the child's ``ru_maxrss``), ``wall_seconds`` and ``status``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from importlib import import_module
from pathlib import Path
from typing import Any, Callable

from urecjpq_plugin.config import URecJPQError

# host -> "module:function"; modules are imported only inside the run's subprocess.
HOST_RUNNERS = {
    "recbole": "urecjpq_bench.recbole_runner:run_one",
    "mmrec": "urecjpq_bench.mmrec_runner:run_one",  # adapts urecjpq_plugin.hosts.mmrec.hook.run_one
}
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")  # top-k ranking (general models)
CTR_METRICS = ("auc", "logloss")  # labelled evaluation (RecBole's context-aware models)
# Modules a host needs besides its runner, checked (without importing) before any run starts.
HOST_NEEDS = {"recbole": ("recbole",), "mmrec": ("urecjpq_plugin.hosts.mmrec.hook",)}
RESULT_KEYS = ("metrics", "epochs", "seconds_per_epoch", "params", "checkpoint_bytes")


class BenchRunnerError(URecJPQError):
    """A host is unknown, or its runner returned something outside the contract."""


def resolve_runner(host: str) -> Callable[..., dict]:
    if host not in HOST_RUNNERS:
        raise BenchRunnerError(f"--host {host!r} is unknown; valid: {', '.join(HOST_RUNNERS)}")
    module, _, name = HOST_RUNNERS[host].partition(":")
    try:
        return getattr(import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise BenchRunnerError(f"host {host!r} runner {HOST_RUNNERS[host]} is not available: {err}") from None


def check_runner_exists(host: str) -> None:
    """Fail before any run when the host's runner module is absent (found without importing it)."""
    from importlib.util import find_spec

    if host not in HOST_RUNNERS:
        raise BenchRunnerError(f"--host {host!r} is unknown; valid: {', '.join(HOST_RUNNERS)}")
    for module in (HOST_RUNNERS[host].partition(":")[0], *HOST_NEEDS.get(host, ())):
        try:
            found = find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise BenchRunnerError(f"--host {host} needs module {module}, which is not installed")


def check_result(result: Any) -> dict:
    """Refuse a runner result missing contract keys, naming them."""
    if not isinstance(result, dict):
        raise BenchRunnerError(f"runner returned {type(result).__name__}, expected dict with {', '.join(RESULT_KEYS)}")
    missing = [k for k in RESULT_KEYS if k not in result]
    metrics = result.get("metrics", {})
    family = CTR_METRICS if all(m in metrics for m in CTR_METRICS) else METRICS
    missing += [f"metrics[{m!r}]" for m in family if m not in metrics]
    if missing:
        raise BenchRunnerError(f"runner result lacks {', '.join(missing)}")
    return result


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so a stopped bench takes its running child down with it."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def write_json(path: Path, data: Any) -> None:
    """Atomic write: a reader (or a resumed bench) never sees half a file."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def failure_reason(error: str) -> str:
    """The line that says why a run failed: the last non-blank line of its log tail (a traceback's
    exception line), prefixed with how the child ended."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    if not lines:
        return "no output"
    how = lines[0].split(";")[0]
    return lines[-1] if len(lines) == 1 else f"{how}: {lines[-1]}"


def run_in_subprocess(
    spec: dict, run_dir: Path, timeout: float | None = None, python: str | None = None,
    module: str = "urecjpq_bench.child", env: dict | None = None,
) -> dict:
    """Run ``spec`` through ``module`` (``python -m module SPEC RESULT``) in a fresh interpreter.

    Never raises for the run's own failure (crash, timeout, out-of-memory kill).

    Returns the runner's result plus ``status`` ("ok" | "failed"), ``error`` (log tail),
    ``peak_rss_bytes`` (``wait4`` rusage of that child alone) and ``wall_seconds``.
    """
    # Absolute: the child starts in run_dir, so a relative --out would name paths that do not exist there.
    run_dir = Path(run_dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = run_dir / "spec.json", run_dir / "result.json", run_dir / "child.log"
    result_path.unlink(missing_ok=True)
    write_json(spec_path, spec)
    cmd = [python or sys.executable, "-m", module, str(spec_path), str(result_path)]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **env} if env else None)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child only
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if timer:
                timer.cancel()
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    out: dict = {"wall_seconds": time.perf_counter() - start, "peak_rss_bytes": usage.ru_maxrss * 1024}
    if rc == 0 and result_path.exists():
        out.update(json.loads(result_path.read_text()), status="ok")
    else:
        why = "timed out" if timer and rc < 0 else f"exit status {rc}"
        out.update(status="failed", error=f"{why}; last lines of {log_path}:\n{_tail(log_path)}")
    return out

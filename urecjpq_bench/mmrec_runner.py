"""MMRec runner for the bench: :func:`urecjpq_plugin.hosts.mmrec.hook.run_one`, its record in the bench's keys.

``hosts.mmrec.run_one(model, dataset, overrides, out_dir, mmrec_src)`` returns ``test_result``,
``trainable_params``, ``id_table_params``, ``feature_params``, ``checkpoint_bytes``, ``epochs_run``,
``seconds_per_epoch``; this maps them onto the contract in :mod:`.hosts` and keeps the rest.
"""

from __future__ import annotations

from typing import Any

from urecjpq_bench.hosts import BenchRunnerError


def to_bench_record(record: dict) -> dict:
    if "metrics" in record:  # already in the bench's keys
        return record
    if record.get("loss_nan_epoch") is not None:
        hyper = ", ".join(f"{k}={v}" for k, v in (record.get("hyper") or {}).items())
        raise BenchRunnerError(
            f"{record.get('model', 'the model')}: training loss became NaN at epoch {record['loss_nan_epoch']} "
            f"({hyper or 'MMRec defaults'}); MMRec stopped the run, so its metrics are not a result. Run it with "
            "another grid point, e.g. --set \"learning_rate=[0.001]\""
        )
    out = {k: v for k, v in record.items() if k not in ("test_result", "epochs_run", "loss_nan_epoch", "model")}
    out["metrics"] = {k.lower(): float(v) for k, v in record["test_result"].items()}
    out["epochs"] = record["epochs_run"]
    out["params"] = {"id_tables": record["id_table_params"], "features": record.get("feature_params", 0),
                     "total": record["trainable_params"]}
    return out


def run_one(model: str, dataset: str, overrides: dict, out_dir: str, mmrec_src: str | None = None, **options: Any) -> dict:
    from urecjpq_plugin.hosts.mmrec import hook as mmrec

    return to_bench_record(mmrec.run_one(model, dataset, overrides, out_dir, mmrec_src=mmrec_src, **options))

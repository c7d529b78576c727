"""One (size, variant) of the scale bench, in its own process so its peak RSS is its own.

``python -m urecjpq_bench.scale_child SPEC.json RESULT.json``; the spec holds the size and
every setting (see :func:`urecjpq_bench.scale.plan`).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from urecjpq_bench import bpr
from urecjpq_bench.hosts import write_json
from urecjpq_bench.synthetic import generate


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    n, d, M, ksub, seed = spec["size"], spec["d"], spec["M"], spec["ksub"], spec["seed"]
    out: dict = {"rss_start": _rss_peak()}
    start = time.perf_counter()
    data = generate(n, n, per_user=spec["per_user"], n_clusters=spec["clusters"], seed=seed)
    out.update(data_seconds=time.perf_counter() - start, nnz=data.nnz, n_test=len(data.test_users),
               data_bytes=data.nbytes(), rss_after_data=_rss_peak())
    codes = None
    if spec["variant"] == "jpq":
        start = time.perf_counter()
        codes = bpr.assign_codes(data, M, ksub, seed, d)
        out.update(code_seconds=time.perf_counter() - start, rss_after_codes=_rss_peak())
    model, opt = bpr.build(data, spec["variant"], d, codes, ksub, seed, spec["lr"])
    del codes
    out["rss_after_build"] = _rss_peak()
    steps = max(1, min(spec["max_steps"], int(spec["epochs"] * data.nnz / spec["batch"])))
    out.update(bpr.train(model, opt, data, steps, spec["batch"], seed))
    out["rss_after_train"] = _rss_peak()
    out["id_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out["id_bytes"] = _bytes(list(model.parameters()) + list(model.buffers()))
    out["optimizer_bytes"] = _bytes(t for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    ckpt = Path(spec["out_dir"]) / "model.pt"
    torch.save(model.state_dict(), ckpt)
    out["checkpoint_bytes"] = os.path.getsize(ckpt)
    ckpt.unlink()
    start = time.perf_counter()
    out["recall@20"] = bpr.recall_at(model, data, 20, spec["eval_users"], seed)
    out["eval_seconds"] = time.perf_counter() - start
    out["popularity_recall@20"] = bpr.popularity_recall(data, 20, spec["eval_users"], seed)
    out["rss_peak_self"] = _rss_peak()
    return out


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    write_json(Path(result_path), measure(json.loads(Path(spec_path).read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

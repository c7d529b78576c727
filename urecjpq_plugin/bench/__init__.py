"""Benchmarks: the numbers users come for.

- ``urecjpq bench``        (:mod:`.run`)   train host models with and without jpq, side by side, on a
                                          real dataset; one subprocess per run; resumable results folder.
- ``urecjpq bench-scale``  (:mod:`.scale`) plain-torch BPR on synthetic data (:mod:`.synthetic`) at
                                          10^4..10^7 users/items: memory, checkpoint and step-time ratios.

Per-host runners (:mod:`.hosts`) share one contract, ``run_one(model, dataset, overrides, out_dir,
**options) -> dict``, so adding a host is one function.
"""

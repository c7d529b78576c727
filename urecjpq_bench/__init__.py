"""Benchmarks of urecjpq_plugin (its own package, installed with the ``bench`` extra): the numbers users come for.

- ``urecjpq bench``        (:mod:`.run`)   train host models with and without jpq, side by side, on a
                                          real dataset; one subprocess per run; resumable results folder.
- ``urecjpq bench-scale``  (:mod:`.scale`) plain-torch BPR on synthetic data (:mod:`.synthetic`) at
                                          10^4..10^7 users/items: memory, checkpoint and step-time ratios.

Per-host runners (:mod:`.hosts`) share one contract, ``run_one(model, dataset, overrides, out_dir,
**options) -> dict``, so adding a host is one function.
"""

try:  # the `bench` extra; without it the package does not import, and `urecjpq bench` says what to install
    import matplotlib  # noqa: F401
    import tqdm  # noqa: F401
except ModuleNotFoundError as err:
    raise ModuleNotFoundError(
        f"the benchmarks need the bench extra ({err.name} is not installed): pip install 'urecjpq_plugin[bench]'",
        name=err.name,
    ) from None

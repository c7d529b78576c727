"""RecBole host: ``jpq: true`` in a RecBole config compresses every general and context-aware model.

- ``hook``      activate/deactivate: wraps ``get_model`` so a built model is compressed; checkpoints
- ``cli``       the ``urecjpq-recbole`` command (RecBole's ``run_recbole`` with ``--jpq``)
- ``names``     model and dataset names RecBole ships, checked before any work
- ``context``   context-aware (FM family) models: the user/item row ranges of the shared token table
- ``topk``      full-sort prediction straight from the codes (PQTopK)
- ``compress``  ``urecjpq compress``: post-training quantisation of a trained checkpoint
- ``ddp``       RecBole's multi-GPU launcher with compressed tables
- ``compat``    the shims RecBole 1.2.1 needs on today's numpy/scipy/torch
"""
from urecjpq_plugin.hosts.recbole.hook import *  # noqa: F401,F403  (the public API: activate, run, ...)
from urecjpq_plugin.hosts.recbole.hook import __all__  # noqa: F401

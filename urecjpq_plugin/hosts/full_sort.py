"""Full-sort prediction from the codes, for host models whose item score is a plain dot product.

A host lists, per model class, how its own ``full_sort_predict`` computes the query vectors and which
raw item table it multiplies them with (``query @ <table>.weight.T``). :func:`route_full_sort` then
replaces the bound ``full_sort_predict`` of one compressed instance by those query vectors and
``JPQEmbedding.score`` (:func:`urecjpq_plugin.topk.scores_from_codes`): a lookup-table scan for a query
or two over a large catalogue, the uncompressed ``q @ W.T`` on a cached decode for small tables,
chunked decode + matmul for big batches. Models whose class is not listed, or is subclassed with its
own ``full_sort_predict``, keep their path.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from urecjpq_plugin.jpq import JPQEmbedding

Query = Callable[[nn.Module, Any], torch.Tensor]


class PQFullSort:
    """``full_sort_predict`` of one compressed instance: the host's query vectors, then
    ``JPQEmbedding.score``. An object rather than a closure, so the model pickles and deep-copies
    (``query`` is a module-level function of the host)."""

    def __init__(self, model: nn.Module, query: Query, table_name: str, flat: bool) -> None:
        self.model, self.query, self.table_name, self.flat = model, query, table_name, flat

    def __call__(self, interaction: Any) -> torch.Tensor:
        scores = getattr(self.model, self.table_name).score(self.query(self.model, interaction))
        return scores.reshape(-1) if self.flat else scores


def _owner(model: nn.Module, module_prefix: str) -> type | None:
    """The class whose ``full_sort_predict`` the instance runs, if it is the host's own."""
    for cls in type(model).__mro__:
        if "full_sort_predict" in cls.__dict__:
            return cls if cls.__module__.startswith(module_prefix) else None
    return None


def route_full_sort(
    model: nn.Module,
    routes: Mapping[str, tuple[Query, str]],
    module_prefix: str,
    flatten: Callable[[type], bool] = lambda owner: False,
) -> bool:
    """Route ``model.full_sort_predict`` through PQ scoring; ``False`` (no change) when not applicable.

    ``routes``: host class name -> (query vectors of a batch, item table attribute); applies when the
    model runs that class's own ``full_sort_predict`` (defined in a module under ``module_prefix``) and
    the item table is a :class:`JPQEmbedding`. ``flatten(owner)``: whether the host returns ``[B * N]``
    rather than ``[B, N]``. Idempotent.
    """
    owner = _owner(model, module_prefix)
    if owner is None or owner.__name__ not in routes:
        return False
    query, table_name = routes[owner.__name__]
    if not isinstance(getattr(model, table_name, None), JPQEmbedding):
        return False
    model.full_sort_predict = PQFullSort(model, query, table_name, flatten(owner))
    model._urecjpq_pq_full_sort = owner.__name__
    return True

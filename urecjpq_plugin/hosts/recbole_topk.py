"""RecBole full-sort prediction from the codes, for models whose item score is a plain dot product.

``install_pq_full_sort(model)`` replaces the bound ``full_sort_predict`` of one compressed model
instance by: the user/sequence vectors computed exactly as the model's own ``full_sort_predict`` does,
then ``JPQEmbedding.score``. RecBole's trainer needs the full ``[B, N]`` scores (it masks the history
and item 0 itself), so this is the full-score dispatcher (:func:`urecjpq_plugin.topk.scores_from_codes`):
a lookup-table scan for a query or two over a large catalogue, decode + BLAS matmul otherwise (small
tables, RecBole's evaluation batches of many users), which costs what the uncompressed ``q @ W.T``
costs plus one decode of the table, never the slow per-item gathers at large batches.

The mapping below is explicit and only lists models whose RecBole 1.2.1 ``full_sort_predict`` is
``query @ <item table>.weight.T`` with the raw item table (read from their source). Models that
normalise (SimpleX, CORE), add a bias (BERT4Rec), slice (S3Rec), transform (NPE, KSR) or propagate
the table (LightGCN, NGCF, ...) keep their own path.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch
from torch import nn

from ..jpq import JPQEmbedding

Query = Callable[[nn.Module, Any], torch.Tensor]


def _user_embedding(model: nn.Module, interaction: Any) -> torch.Tensor:
    return model.user_embedding(interaction[model.USER_ID])


def _bpr(model: nn.Module, interaction: Any) -> torch.Tensor:
    return model.get_user_embedding(interaction[model.USER_ID])


def _enmf(model: nn.Module, interaction: Any) -> torch.Tensor:
    # H_i(u * i) = sum_d h_d u_d i_d = (u * h) . i  (H_i is Linear(d, 1, bias=False))
    return model.user_embedding(interaction[model.USER_ID]) * model.H_i.weight.reshape(1, -1)


def _sequence(model: nn.Module, interaction: Any) -> torch.Tensor:
    return model.forward(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])


# model class name -> (query vectors, item table attribute); see the module docstring for the rule.
PQ_FULL_SORT: dict[str, tuple[Query, str]] = {
    "BPR": (_bpr, "item_embedding"),
    "LINE": (_user_embedding, "item_embedding"),
    "ENMF": (_enmf, "item_embedding"),
    "GRU4Rec": (_sequence, "item_embedding"),
    "SASRec": (_sequence, "item_embedding"),
    "NARM": (_sequence, "item_embedding"),
    "STAMP": (_sequence, "item_embedding"),
    "SRGNN": (_sequence, "item_embedding"),
    "GCSAN": (_sequence, "item_embedding"),
    "LightSANs": (_sequence, "item_embedding"),
}


def _recbole_owner(model: nn.Module) -> type | None:
    """The class whose ``full_sort_predict`` the instance runs, if it is one of RecBole's own."""
    for cls in type(model).__mro__:
        if "full_sort_predict" in cls.__dict__:
            return cls if cls.__module__.startswith("recbole.model.") else None
    return None


def install_pq_full_sort(model: nn.Module) -> bool:
    """Route ``model.full_sort_predict`` through PQ scoring; ``False`` (no change) when not applicable.

    Applicable when the model's ``full_sort_predict`` is RecBole's own for a class in
    :data:`PQ_FULL_SORT` and its item table is a :class:`JPQEmbedding`. Idempotent.
    """
    owner = _recbole_owner(model)
    if owner is None or owner.__name__ not in PQ_FULL_SORT:
        return False
    query, table_name = PQ_FULL_SORT[owner.__name__]
    table = getattr(model, table_name, None)
    if not isinstance(table, JPQEmbedding):
        return False

    flatten = ".general_recommender." in owner.__module__  # as the originals: general [B*N], sequential [B, N]

    def full_sort_predict(self: nn.Module, interaction: Any) -> torch.Tensor:
        scores = getattr(self, table_name).score(query(self, interaction))
        return scores.reshape(-1) if flatten else scores

    model.full_sort_predict = types.MethodType(full_sort_predict, model)
    model._urecjpq_pq_full_sort = owner.__name__
    return True

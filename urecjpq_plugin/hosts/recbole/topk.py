"""RecBole full-sort prediction from the codes, for models whose item score is a plain dot product.

``install_pq_full_sort(model)`` replaces the bound ``full_sort_predict`` of one compressed model
instance by: the user/sequence vectors computed exactly as the model's own ``full_sort_predict`` does,
then ``JPQEmbedding.score`` (:mod:`.full_sort`). RecBole's trainer needs the full ``[B, N]`` scores (it
masks the history and item 0 itself), so this is the full-score dispatcher, not top-k.

The mapping below is explicit and only lists models whose RecBole 1.2.1 ``full_sort_predict`` is
``query @ <item table>.weight.T`` with the raw item table (read from their source). Models that
normalise (SimpleX, CORE), add a bias (BERT4Rec), slice (S3Rec), transform (NPE, KSR) or propagate
the table (LightGCN, NGCF, ...) keep their own path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from urecjpq_plugin.hosts.full_sort import Query, route_full_sort


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


def install_pq_full_sort(model: nn.Module) -> bool:
    """Route ``model.full_sort_predict`` through PQ scoring (:func:`~.full_sort.route_full_sort`) when
    it is RecBole's own for a class in :data:`PQ_FULL_SORT`; ``False`` (no change) otherwise."""
    # As the originals: general recommenders return [B * N], sequential ones [B, N].
    return route_full_sort(model, PQ_FULL_SORT, "recbole.model.", lambda owner: ".general_recommender." in owner.__module__)

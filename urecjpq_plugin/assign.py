"""One entry point for code assignment, shared by ``apply_jpq`` and both hosts.

A host supplies only what it has (the training matrix, item features); the choice between
``svd``, ``random``, ``features`` and ``features_svd`` is made here, once.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .codes import log_distinct_fractions, random_codes, svd_codes
from .config import JPQConfig, JPQConfigError


def assign_codes(
    config: JPQConfig, interactions: Any = None, counts: dict[str, int] | None = None,
    item_features: Sequence[Any] | None = None, host: str = "this host",
) -> dict[str, torch.Tensor]:
    """``{"user": [n_users, M], "item": [n_items, M]}`` codes for ``config.code_assign``.

    ``interactions``: scipy users x items *training* matrix (needed by every method but ``random``);
    ``counts``: rows per entity when there is no matrix; ``item_features``: arrays ``[n_items, *]``
    for ``features``/``features_svd``. Logs each table's distinct-code fraction.
    """
    how, M, ksub, seed = config.code_assign, config.M, config.ksub, config.seed
    if not isinstance(M, int):
        raise JPQConfigError(f"jpq_M={M!r} must be resolved to the tables' width first (JPQConfig.for_dims)")
    if how == "random":
        if counts is None:
            counts = dict(zip(("user", "item"), interactions.shape))
        return log_distinct_fractions({e: random_codes(counts[e], M, ksub, seed + i) for i, e in
                                       enumerate(("user", "item")) if e in counts})
    if interactions is None:
        raise JPQConfigError(f"jpq_code_assign={how!r} needs the training interactions (a users x items matrix); "
                             "give them, or use random")
    inter = interactions.tocsr().astype("float32")
    if how == "svd":
        user, item = svd_codes(inter, M, ksub, seed)
    elif item_features is None:
        raise JPQConfigError(f"jpq_code_assign={how!r} needs multimodal item features, which {host} does not "
                             "have; use svd or random")
    else:
        from .features import feature_id_codes, normalised_concat

        user, item = feature_id_codes(normalised_concat(item_features), inter, M, ksub, seed, how)
    return log_distinct_fractions({"user": user, "item": item})

"""One entry point for code assignment, shared by ``apply_jpq`` and both hosts.

A host supplies only what it has (the training matrix, item features); the choice between
``auto``, ``svd_pq_cos``, ``svd_pq``, ``svd_pq_norm``, ``svd``, ``lightgcn_fit``, ``random``, ``features`` and
``features_svd`` is made here, once.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from urecjpq_plugin.codes import log_distinct_fractions, random_codes, svd_codes, svd_pq_codes
from urecjpq_plugin.config import AUTO, DSUB_AUTO, JPQConfig, JPQConfigError

logger = logging.getLogger("urecjpq_plugin")

# jpq_code_assign: auto takes svd_pq_cos (svd_pq until its directions were measured better, see
# resolve_auto) below this many training interactions per ID (users and items
# together: 2 nnz / (users + items)), svd from it on. Measured on both sides of it with BPR (RecBole,
# 3 seeds, recall@20 vs uncompressed): Amazon Baby 5-core (8.9 per ID) svd_pq -11 %, svd -19 %;
# ml-100k (61 per ID; harness) svd -3 %, svd_pq -14 %. The Amazon 5-core catalogues MMRec uses and
# TikTok have 7-11 in their training splits; MovieLens latest-small (15.6), where svd measured +9 %,
# and the larger MovieLens sets stay on svd. Between 12 and 60 nothing was measured with svd_pq.
SPARSE_DEGREE = 12.0


# jpq_degree_scale: auto uses this c in the sparse regime (below SPARSE_DEGREE), for models whose
# score is a dot product of the rows or of a linear propagation of them, and no scale otherwise.
# Plain-PyTorch BPR on Amazon Baby, 3 seeds, svd_pq codes and split dropout 0.1, test recall@20 vs
# uncompressed: no scale -7.7 %, c = 1 -6.0 %, c = 3 -3.1 %, c = 10 -3.3 % (best epoch 14 vs 22);
# RecBole on Baby (3 seeds): BPR -10.7 % -> -5.5 %, LightGCN -18.3 % -> -16.3 %; but NGCF, whose
# layers transform the rows, -6.6 % -> -37.6 % (seed 2020). On ml-100k (61 per ID, svd codes) c = 3
# cost -13.8 %, hence off on dense data.
DEGREE_SCALE = 3.0


def interactions_per_id(interactions: Any) -> float:
    """Training interactions per ID, users and items together: ``2 nnz / (users + items)``."""
    return 2 * interactions.nnz / max(sum(interactions.shape), 1)


def resolve_auto(interactions: Any, directions: bool = True) -> str:
    """``svd_pq_cos`` for a sparse training matrix (few interactions per ID), else ``svd``.

    ``directions=False`` (a host's models that normalise or transform the rows, e.g. RecBole's NGCF and
    SimpleX) gives ``svd_pq`` instead of ``svd_pq_cos`` on sparse data: codes from directions leave how
    often an ID was seen to the row norms (the degree scale), which such models do not score by.

    ``svd_pq_cos`` (k-means of the factors' directions) over ``svd_pq`` (of the raw factors), plain-PyTorch
    harness, 3 seeds, recall@20 vs uncompressed: BPR on Amazon Baby -3.1 % -> +4.2 %, on TikTok -15.3 % ->
    +0.8 %; LightGCN on Baby -18.7 % -> -9.1 % (see docs/benchmarks.md). ``svd_pq_norm`` is not chosen:
    for LightGCN it gained on Baby and lost on TikTok (MMRec, 3 seeds: -13.8 % -> -23.4 %).
    """
    if interactions_per_id(interactions) >= SPARSE_DEGREE:
        return "svd"
    return "svd_pq_cos" if directions else "svd_pq"


def resolve_degree_scale(config: JPQConfig, interactions: Any, dot_product_model: bool = True) -> float:
    """The ``c`` of :func:`degree_scales` for this config and training matrix (0: no scale).

    ``dot_product_model``: whether the host knows the model scores by dot products of the rows (or of
    a linear propagation of them); ``auto`` leaves every other model without a scale.
    """
    if config.degree_scale != AUTO:
        return float(config.degree_scale)
    sparse = interactions_per_id(interactions) < SPARSE_DEGREE
    return DEGREE_SCALE if sparse and dot_product_model else 0.0


def resolve_unit_rows(config: JPQConfig, interactions: Any, known_model: bool = True) -> bool:
    """Whether the tables decode unit rows (:meth:`~urecjpq_plugin.jpq.JPQEmbedding.set_unit_rows`).

    ``auto``: on sparse training data (below ``SPARSE_DEGREE`` interactions per ID) for the models the host
    measured (``known_model``). There shared sub-embeddings otherwise lower the training loss by growing
    the rows many IDs share, and the model ranks the popular items above the rest; dense data keeps
    plain rows, so its measured numbers stand.
    """
    if config.unit_rows != AUTO:
        return bool(config.unit_rows)
    if interactions is None or not known_model:
        return False
    per_id = interactions_per_id(interactions)
    if per_id >= SPARSE_DEGREE:
        return False
    logger.info(f"urecjpq: unit rows (each decoded row at unit length times a learned length per table; "
                f"{per_id:.1f} training interactions per ID, below {SPARSE_DEGREE:g})")
    return True


def degree_scales(config: JPQConfig, interactions: Any, dot_product_model: bool = True) -> dict[str, torch.Tensor]:
    """Per-ID row scales ``{"user": [n_users], "item": [n_items]}`` in [0, 1], or ``{}`` when off.

    ``s(i) = sqrt(n_i / (n_i + c * mean n))`` with ``n_i`` the ID's training interactions: an ID seen
    rarely keeps a short row, as it would in an uncompressed table that its few gradients barely move
    from a small initialisation. Without it every ID decodes from shared sub-embeddings at full norm,
    and on sparse data the model drifts to ranking rarely seen items first (docs/benchmarks.md, "Sparse catalogues").
    """
    if interactions is None:
        return {}
    inter = interactions.tocsr()
    c = resolve_degree_scale(config, inter, dot_product_model)
    if c == 0:
        return {}
    if not inter.has_canonical_format or not (inter.data != 0).all():
        inter = inter.copy()  # the caller's matrix stays as given
        inter.eliminate_zeros()
        inter.sum_duplicates()
    # Degrees from the CSR index arrays: no copy of a matrix that holds 10^7-10^8 pairs.
    degrees = {"user": np.diff(inter.indptr), "item": np.bincount(inter.indices, minlength=inter.shape[1])}
    out = {}
    for entity, degree in degrees.items():
        n = torch.from_numpy(degree.astype(np.float32))
        out[entity] = torch.sqrt(n / (n + c * n.mean().clamp_min(1e-12)))
    logger.info(f"urecjpq: degree scale c={c:g} (rows scaled by sqrt(n / (n + c mean n)), n = training "
                f"interactions; {interactions_per_id(inter):.1f} per ID)")
    return out


def assign_codes(
    config: JPQConfig, interactions: Any = None, counts: dict[str, int] | None = None,
    item_features: Sequence[Any] | None = None, host: str = "this host",
) -> dict[str, torch.Tensor]:
    """``{"user": [n_users, M], "item": [n_items, M]}`` codes for ``config.code_assign``.

    ``interactions``: scipy users x items *training* matrix (needed by every method but ``random``);
    ``counts``: rows per entity when there is no matrix; ``item_features``: arrays ``[n_items, *]``
    for ``features``/``features_svd``. ``svd_pq`` / ``svd_pq_norm`` / ``svd_pq_cos`` take the tables' width (``config.dim``,
    set by :meth:`JPQConfig.for_dims`; else ``4 * M``) as their SVD rank, ``lightgcn_fit`` as its fit's row width.
    Logs each table's distinct-code fraction.
    """
    if config.table_overrides:  # per-table M / ksub: each side's codes at its own settings
        sides = [e for e in ("user", "item") if counts is None or e in counts]
        if config.same_for(*sides):
            return assign_codes(config.for_table(sides[0]), interactions, counts, item_features, host)
        return {e: assign_codes(config.for_table(e), interactions, counts, item_features, host)[e] for e in sides}
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
    bad = int(inter.nnz - np.isfinite(inter.data).sum())
    if bad:
        raise JPQConfigError(f"interactions has {bad} non-finite entries (NaN or inf); give a finite users x items "
                             "training matrix")
    if inter.count_nonzero() == 0:
        raise JPQConfigError(f"interactions {inter.shape} has no nonzero entry, so jpq_code_assign={how!r} has "
                             "nothing to learn from; give the training interactions, or use random")
    if how == AUTO:
        how = resolve_auto(inter)
        logger.info(f"urecjpq: jpq_code_assign=auto -> {how} ({interactions_per_id(inter):.1f} "
                    f"training interactions per ID; svd_pq_cos below {SPARSE_DEGREE:g})")
    if how == "svd":
        user, item = svd_codes(inter, M, ksub, seed)
    elif how in ("svd_pq", "svd_pq_norm", "svd_pq_cos"):
        if config.code_weight:
            logger.info(f"urecjpq: {how} k-means weighs each ID by (training interactions) ** {config.code_weight:g}")
        user, item = svd_pq_codes(inter, M, ksub, seed, rank=config.dim or M * DSUB_AUTO,
                                  normalise=how == "svd_pq_norm", unit_rows=how == "svd_pq_cos",
                                  degree_weight=config.code_weight)
    elif how == "lightgcn_fit":
        from urecjpq_plugin.fit_codes import lightgcn_fit_codes

        user, item = lightgcn_fit_codes(inter, M, ksub, seed, dim=config.dim or M * DSUB_AUTO)
    elif item_features is None:
        raise JPQConfigError(f"jpq_code_assign={how!r} needs multimodal item features, which {host} does not "
                             "have; use svd or random")
    else:
        from urecjpq_plugin.features import feature_id_codes, normalised_concat

        user, item = feature_id_codes(normalised_concat(item_features), inter, M, ksub, seed, how)
    return log_distinct_fractions({"user": user, "item": item})

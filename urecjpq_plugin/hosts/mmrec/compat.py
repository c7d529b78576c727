"""In-process workarounds that let MMRec (commit e775373) run on CPU and today's stack, no MMRec file edited.

Installed by :func:`install` (the MMRec host's ``activate()`` calls it); each one is scoped to
what MMRec needs and says why:

- ``np.float`` alias: ``utils/metrics.py`` uses it (removed in numpy 1.24).
- ``Tensor.cuda()`` returns the tensor itself when no GPU exists: LATTICE, MGCN, SMORE, GRCN and
  DAMRS call ``.cuda()`` unconditionally (on a GPU machine nothing is changed).
- ``models.common``: LayerGCN imports ``models.common.*``, which does not exist (MMRec's
  ``common`` package is top-level); the alias points at the same modules.
- ``sparsesvd``: PGL imports it (a C extension); when it is missing, a module with the same
  function built on ``scipy.sparse.linalg.svds`` (top-``k`` singular triplets, descending, as
  sparsesvd returns them: ``ut [k, m]``, ``s [k]``, ``vt [k, n]``).
- DualGNN/DRAGON keep ``result_embed`` (a cache of the last forward) as an ``nn.Parameter`` and
  later assign a plain tensor to it, which ``nn.Module`` refuses on CPU (on GPU ``.to(device)``
  had already turned it into a plain tensor): :func:`after_init` makes it the plain tensor it is on GPU.
- DualGNN/DRAGON read ``user_graph_dict.npy``: when the dataset folder lacks it,
  :func:`ensure_user_graph` builds it in the plugin's cache (never the user's data folder) and points
  the config's file name there, with the computation of MMRec's ``preprocessing/dualgnn-gen-u-u-matrix.py`` (user-user
  co-interaction counts on the training split, each user's top 200 neighbours).
- DAMRS reads ``item_graph_dict_2.npy``, which no MMRec script makes: :func:`ensure_item_graph`
  builds it the same way (in the cache, when missing), as DA-MRS's own ``build_iib_graph.py`` does (item-item counts of shared
  training users, pairs sharing at least 2, each item's top ``k`` with ``k`` from the file name).
- ``torch_scatter`` (SLMRec imports ``scatter``; MGCN and SMORE reach ``scatter_add`` through
  ``utils.get_sparse_laplacian``): a compiled package; when it does not import,
  :mod:`.scatter` puts a thin module over ``torch_geometric.utils.scatter`` in its place.

Every shim goes into one :class:`~urecjpq_plugin.hosts.base.Patches`; :func:`uninstall` (called by the
host's ``deactivate()``) takes each one out again.

What cannot be worked around stops with one line (:class:`MMRecUnsupported`): the image+text
requirement of DAMRS, LGMRec, PGL, MVGAE, MGCN, SMORE and SLMRec (their forward reads both
modalities unconditionally), GRCN with text features only (a typo in MMRec leaves its content
representation unset).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import types
from logging import getLogger
from typing import Any

import numpy as np
import torch

from urecjpq_plugin.config import URecJPQError
from urecjpq_plugin.hosts.base import Patches
from urecjpq_plugin.hosts.mmrec import scatter as scatter_compat

_SHIMS = Patches()
#: model -> module it needs that this stack may lack (checked before MMRec imports the model)
NEEDS_MODULE = {"SLMRec": "torch_scatter", "MGCN": "torch_scatter", "SMORE": "torch_scatter"}
#: models whose ``result_embed`` Parameter is a forward cache that MMRec later overwrites
RESULT_CACHE_PARAMETER = ("DualGNN", "DRAGON")
USER_GRAPH_MODELS = ("DualGNN", "DRAGON")
#: models whose code reads both modalities unconditionally
NEEDS_IMAGE_AND_TEXT = ("DAMRS", "LGMRec", "PGL", "MVGAE", "MGCN", "SMORE", "SLMRec")
USER_GRAPH_TOP = 200
#: DA-MRS's build_iib_graph.py: items are neighbours when at least 2 training users share them
ITEM_GRAPH_MIN_SHARED = 2
ITEM_GRAPH_DEFAULT_TOP = 2  # DAMRS.yaml reads item_graph_dict_2.npy


class MMRecUnsupported(URecJPQError):
    """MMRec's model cannot run on this stack or dataset; the message says why in one line."""


# -- process-wide shims -------------------------------------------------------------------------
def _cuda_is_identity_without_gpu() -> None:
    if torch.cuda.is_available():
        return

    def cuda(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self

    _SHIMS.set(torch.Tensor, "cuda", cuda)


def sparsesvd(matrix: Any, k: int):
    """``sparsesvd.sparsesvd`` on scipy: the top ``k`` singular triplets, largest first."""
    from scipy.sparse.linalg import svds

    k = max(1, min(int(k), min(matrix.shape) - 1))
    u, s, vt = svds(matrix.astype(np.float64), k=k)
    order = np.argsort(-s)
    return u[:, order].T, s[order], vt[order]


def _sparsesvd_module() -> None:
    if "sparsesvd" in sys.modules or importlib.util.find_spec("sparsesvd") is not None:
        return
    module = types.ModuleType("sparsesvd", "urecjpq_plugin stand-in for sparsesvd (scipy svds)")
    module.sparsesvd = sparsesvd  # type: ignore[attr-defined]
    _SHIMS.set_item(sys.modules, "sparsesvd", module)


def _models_common_alias() -> None:
    """``models.common.X`` -> MMRec's top-level ``common.X`` (same module objects, same classes)."""
    if "models.common" in sys.modules or importlib.util.find_spec("common") is None:
        return
    import common  # MMRec's src/common
    import common.abstract_recommender
    import common.loss
    import models  # noqa: F401  (the parent package must be imported first)

    _SHIMS.set_item(sys.modules, "models.common", common)
    _SHIMS.set_item(sys.modules, "models.common.abstract_recommender", common.abstract_recommender)
    _SHIMS.set_item(sys.modules, "models.common.loss", common.loss)


def install() -> None:
    """Install the process-wide shims (idempotent). MMRec's ``src`` must be importable."""
    if _SHIMS.active:
        return
    if not hasattr(np, "float"):
        _SHIMS.set(np, "float", float)
    _cuda_is_identity_without_gpu()
    _sparsesvd_module()
    _models_common_alias()
    if scatter_compat.needed():
        _SHIMS.set_item(sys.modules, scatter_compat.MODULE_NAME, scatter_compat.standin_module())
    _SHIMS.active = True


def uninstall() -> None:
    """Take every shim of :func:`install` out again (``np.float``, ``Tensor.cuda``, the stand-in modules)."""
    _SHIMS.undo()


# -- per-model checks and fixes ---------------------------------------------------------------
def check_importable(model_name: str) -> None:
    needed = NEEDS_MODULE.get(model_name)
    if needed and importlib.util.find_spec(needed) is None:
        raise MMRecUnsupported(
            f"{model_name} imports {needed}, which is not installed (it needs a compiled build matching this torch); "
            f"install torch_geometric (the mmrec extra) or {needed} for torch {torch.__version__.split('+')[0]} to run it"
        )


def _dataset_dir(config: Any) -> str:
    return os.path.abspath(str(config["data_path"]) + str(config["dataset"]))


def before_init(model_name: str, config: Any, dataloader: Any) -> None:
    """Checks and data files a model needs, before MMRec's ``__init__`` runs."""
    folder = _dataset_dir(config)
    has = {
        "image": os.path.isfile(os.path.join(folder, str(config["vision_feature_file"]))),
        "text": os.path.isfile(os.path.join(folder, str(config["text_feature_file"]))),
    }
    missing = [m for m in ("image", "text") if not has[m]]
    if model_name in NEEDS_IMAGE_AND_TEXT and missing:
        raise MMRecUnsupported(
            f"{model_name} needs image and text features (its code uses both unconditionally); "
            f"dataset {config['dataset']} lacks {' and '.join(missing)}"
        )
    if model_name == "DAMRS":
        ensure_item_graph(config, dataloader)
    if model_name == "GRCN" and not has["image"]:
        raise MMRecUnsupported(
            "GRCN needs image features: with text only, MMRec's GRCN.forward leaves content_rep unset "
            "(typo `conetent_rep`) and fails"
        )
    if model_name in USER_GRAPH_MODELS:
        ensure_user_graph(config, dataloader)


def after_init(model: torch.nn.Module) -> None:
    """Fixes applied right after MMRec's ``__init__`` (see the module docstring)."""
    name = type(model).__name__
    if name in RESULT_CACHE_PARAMETER and "result_embed" in model._parameters:
        cache = model._parameters.pop("result_embed").detach()
        model.result_embed = cache  # a plain attribute, as on GPU


def co_occurrence_graph(rows: Any, top: int, min_shared: int = 1) -> dict:
    """``{row: [neighbour rows, shared counts]}`` for every row of a 0/1 matrix, most shared first.

    Rows ``a != b`` are neighbours with weight = number of distinct columns both have, kept when
    at least ``min_shared``; at most ``top`` per row, ties broken by row id.
    """
    import scipy.sparse as sp

    R = sp.csr_matrix(rows, dtype=np.float32)
    R.sum_duplicates()
    R.data[:] = 1.0
    C = (R @ R.T).tocsr()
    C.setdiag(0)
    C.data[C.data < min_shared] = 0
    C.eliminate_zeros()
    graph = {}
    for a in range(C.shape[0]):
        start, end = C.indptr[a], C.indptr[a + 1]
        cols, vals = C.indices[start:end], C.data[start:end]
        order = np.lexsort((cols, -vals))[:top]
        graph[a] = [cols[order].astype(np.int64).tolist(), vals[order].astype(np.float64).tolist()]
    return graph


def user_graph_dict(interactions: Any, top: int = USER_GRAPH_TOP) -> dict:
    """``{user: [neighbour ids, co-interaction counts]}`` (MMRec's ``dualgnn-gen-u-u-matrix.py``)."""
    return co_occurrence_graph(interactions, top)


def item_graph_dict(interactions: Any, top: int = ITEM_GRAPH_DEFAULT_TOP, min_shared: int = ITEM_GRAPH_MIN_SHARED) -> dict:
    """``{item: [neighbour ids, shared-user counts]}`` (DA-MRS's ``build_iib_graph.py``); every item is a key."""
    import scipy.sparse as sp

    return co_occurrence_graph(sp.csr_matrix(interactions).T, top, min_shared)


def item_graph_top(file_name: str) -> int:
    """``item_graph_dict_<k>.npy`` -> ``k`` (DA-MRS names the file by its top-k); otherwise the default."""
    match = re.fullmatch(r"item_graph_dict_(\d+)\.npy", os.path.basename(file_name))
    return int(match.group(1)) if match else ITEM_GRAPH_DEFAULT_TOP


def _save_dict_once(path: str, graph: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, graph, allow_pickle=True)
    os.replace(tmp, path)  # atomic: a concurrent run never reads half a file


def graph_cache_file(config: Any, name: str, interactions: Any) -> str:
    """Where a graph file the dataset folder lacks is built: the plugin's cache (``$URECJPQ_CACHE`` or
    ``~/.cache/urecjpq``), keyed by the dataset and a digest of its training matrix, never the user's data."""
    import hashlib

    from urecjpq_plugin.data.presplit import cache_root

    csr = interactions.tocsr()
    digest = hashlib.sha1(np.ascontiguousarray(csr.indptr).tobytes() + np.ascontiguousarray(csr.indices).tobytes())
    folder = os.path.join(cache_root(), "mmrec-graphs", f"{config['dataset']}-{digest.hexdigest()[:16]}")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, os.path.basename(name))


def _ensure_graph(config: Any, dataloader: Any, key: str, name: str, build, what: str) -> str:
    """The dataset folder's own file when it has one; else one built in the cache, and ``config[key]``
    pointed at it (MMRec joins it to the dataset folder, and an absolute path wins that join)."""
    path = os.path.join(_dataset_dir(config), name)
    if os.path.exists(path):
        return path
    R = dataloader.inter_matrix(form="csr")
    path = graph_cache_file(config, name, R)
    if not os.path.exists(path):
        _save_dict_once(path, build(R))
        getLogger().info(f"urecjpq: wrote {path} ({what})")
    config[key] = path
    return path


def ensure_user_graph(config: Any, dataloader: Any) -> str:
    """DualGNN/DRAGON's ``user_graph_dict_file``: the dataset's own, else built from the training split."""
    name = str(config["user_graph_dict_file"] or "user_graph_dict.npy")
    return _ensure_graph(config, dataloader, "user_graph_dict_file", name, user_graph_dict,
                         f"user-user co-interaction graph of the training split, top {USER_GRAPH_TOP}")


def ensure_item_graph(config: Any, dataloader: Any) -> str:
    """DAMRS's ``item_graph_dict_file`` (default ``item_graph_dict_2.npy``): the dataset's own, else built."""
    name = str(config["item_graph_dict_file"] or f"item_graph_dict_{ITEM_GRAPH_DEFAULT_TOP}.npy")
    top = item_graph_top(name)
    return _ensure_graph(config, dataloader, "item_graph_dict_file", name, lambda R: item_graph_dict(R, top),
                         f"item-item graph of the training split: items sharing >= {ITEM_GRAPH_MIN_SHARED} users, top {top}")

"""MMRec host: which tables of an MMRec model are ID tables (and which are feature tables).

:data:`TABLE_SPECS` (module-qualified class names; MMRec's ``BPR``/``LightGCN`` share names with
RecBole's) is the host's own knowledge; a model registered with ``register_id_tables`` or given
YAML ``jpq_tables`` uses that instead, and any other model the core name/row rule
(:func:`urecjpq_plugin.hosts.base.find_tables`). ``user_item`` is GRCN's one table holding users then items.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from urecjpq_plugin.inject import JPQTargetError, TableRef, jpq_modules
from urecjpq_plugin.jpq import JPQEmbedding
from urecjpq_plugin.hosts.base import declared_tables, find_tables

_EMB = {"user": ("user_embedding",), "item": ("item_id_embedding",)}
_PREFERENCE = ("v_gcn.preference", "t_gcn.preference")
#: MMRec's ID tables by module-qualified class name; paths absent in a model instance are skipped
#: (e.g. ``v_gcn.preference`` exists only with image features).
TABLE_SPECS: dict[str, dict[str, tuple[str, ...]]] = {
    "models.bpr.BPR": {"user": ("user_embedding",), "item": ("item_embedding",)},
    "models.vbpr.VBPR": {"user": ("u_embedding",), "item": ("i_embedding",)},
    "models.lightgcn.LightGCN": {"user": ("embedding_dict.user_emb",), "item": ("embedding_dict.item_emb",)},
    "models.selfcfed_lgn.SELFCFED_LGN": {
        "user": ("online_encoder.embedding_dict.user_emb",),
        "item": ("online_encoder.embedding_dict.item_emb",),
    },
    "models.layergcn.LayerGCN": {"user": ("user_embeddings",), "item": ("item_embeddings",)},
    "models.bm3.BM3": _EMB,
    "models.freedom.FREEDOM": _EMB,
    "models.lattice.LATTICE": _EMB,
    "models.mgcn.MGCN": _EMB,
    "models.lgmrec.LGMRec": _EMB,
    "models.smore.SMORE": _EMB,
    "models.damrs.DAMRS": _EMB,
    "models.mmgcf.MMGCF": _EMB,
    "models.slmrec.SLMRec": {"user": ("embedding_user",), "item": ("embedding_item",)},
    "models.grcn.GRCN": {"user_item": ("id_gcn.id_embedding",), "user": _PREFERENCE},
    "models.dualgnn.DualGNN": {"user": _PREFERENCE},
    "models.dragon.DRAGON": {"user": _PREFERENCE},
    "models.pgl.PGL": {"user": ("user_text", "user_image")},
}
#: models whose ID tables are plain tensors that MMRec never trains (not Parameters)
UNTRAINED_TABLES = {
    "models.mmgcn.MMGCN": "id_embedding and the v_gcn/t_gcn preference tables",
    "models.mvgae.MVGAE": "collaborative and the v_gcn/t_gcn preference tables",
}
FEATURE_TABLES = {"image": "image_embedding", "text": "text_embedding"}
#: forward caches read by full_sort_predict; saved with the checkpoint so evaluation can reload
CACHE_ATTRS = ("result_embed", "result")


def class_key(model: nn.Module | type) -> str:
    cls = model if isinstance(model, type) else type(model)
    for klass in cls.__mro__:
        key = f"{klass.__module__}.{klass.__qualname__}"
        if key in TABLE_SPECS or key in UNTRAINED_TABLES:
            return key
    return f"{cls.__module__}.{cls.__qualname__}"


def entity_counts(n_users: int, n_items: int) -> dict[str, int]:
    return {"user": n_users, "item": n_items, "user_item": n_users + n_items}


def id_table_refs(model: nn.Module, counts: Mapping[str, int], targets: tuple[str, ...],
                  config: Any = None) -> tuple[list[TableRef], str]:
    """The ID tables of ``model`` for ``targets`` (``user_item`` joins when both user and item are asked)
    and where the match came from; raises :class:`JPQTargetError` when there is none."""
    if "user" in targets and "item" in targets:
        targets = targets + ("user_item",)
    return find_tables(model, counts, targets, config, TABLE_SPECS.get(class_key(model)))


def feature_tables(model: nn.Module) -> dict[str, nn.Module]:
    """``{target: module}`` for the multimodal feature tables the model has (Embedding or JPQEmbedding)."""
    found = {}
    for target, name in FEATURE_TABLES.items():
        module = getattr(model, name, None)
        if isinstance(module, (nn.Embedding, JPQEmbedding)):
            found[target] = module
    return found


def table_parameters(model: nn.Module, n_users: int, n_items: int, config: Any = None) -> tuple[int, int]:
    """Trainable parameters in (ID tables, feature tables), compressed or not."""
    spec = TABLE_SPECS.get(class_key(model))
    declared, source = declared_tables(model, config, spec)
    if source == "host specs":
        declared = spec  # every name: a shared Parameter may be listed under another (see below)
    if declared is not None:
        paths = [p for entity_paths in declared.values() for p in entity_paths]
    else:
        try:
            paths = [r.path for r in id_table_refs(model, entity_counts(n_users, n_items), ("user", "item"))[0]]
        except JPQTargetError:
            paths = []
    id_names = {n for p in paths for n in (p, f"{p}.weight")}
    for name in jpq_modules(model):  # compressed tables: <path>.sub_embeddings or <path>_jpq.sub_embeddings
        if name not in FEATURE_TABLES.values():
            id_names.update((f"{name}.sub_embeddings", f"{name}.row_log_length"))
    feature_prefixes = tuple(f"{n}." for n in FEATURE_TABLES.values())
    # A Parameter may be registered under several names (DualGNN's forward stores t_gcn.preference
    # as self.t_preference too); classify it by all of them, count it once.
    names_of: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), (param, []))[1].append(name)
    id_params = feature_params = 0
    for param, names in names_of.values():
        if not param.requires_grad:
            continue
        if any(n.startswith(feature_prefixes) for n in names):
            feature_params += param.numel()
        elif any(n in id_names for n in names):
            id_params += param.numel()
    return id_params, feature_params

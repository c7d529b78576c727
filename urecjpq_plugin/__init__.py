"""URecJPQ: joint product quantisation of user and item embedding tables, as a host plugin.

Core (no host framework imported): :func:`apply_jpq` / :func:`unload_jpq` / :func:`jpq_state_dict` /
:func:`load_jpq` for any PyTorch model (:mod:`urecjpq_plugin.apply`), :class:`JPQEmbedding`,
:class:`JPQConfig`, code assignment (:mod:`urecjpq_plugin.codes`), one product quantiser
(:mod:`urecjpq_plugin.pq`), injection (:mod:`urecjpq_plugin.inject`), PQ top-k (:mod:`urecjpq_plugin.topk`).
Hosts live in :mod:`urecjpq_plugin.hosts` and are imported lazily.
"""

from urecjpq_plugin.apply import JPQCheckpointError, JPQReport, apply_jpq, jpq_state_dict, load_jpq, unload_jpq
from urecjpq_plugin.config import JPQConfig, JPQConfigError, URecJPQError
from urecjpq_plugin.inject import JPQTargetError, register_id_tables
from urecjpq_plugin.jpq import JPQEmbedding
from urecjpq_plugin.pq import ProductQuantizer

__all__ = [
    "JPQCheckpointError", "JPQConfig", "JPQConfigError", "JPQEmbedding", "JPQReport", "JPQTargetError",
    "ProductQuantizer", "URecJPQError", "activate", "apply_jpq", "jpq_state_dict", "load_jpq",
    "register_id_tables", "unload_jpq",
]
__version__ = "0.1.0"


def activate(host: str = "recbole") -> None:
    """One-line activation for people who call the host's Python API themselves.

    ``urecjpq_plugin.activate("recbole")`` before ``run_recbole(...)``; then ``jpq: True`` in the
    config compresses the model's user/item tables.
    """
    hosts = ("recbole", "mmrec")
    if host not in hosts:
        raise URecJPQError(f"host={host!r} is unknown; valid: {', '.join(hosts)}")
    from importlib import import_module

    import_module(f".hosts.{host}", __name__).activate()

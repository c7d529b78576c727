"""DecodeCache: the one cache of a :class:`~urecjpq_plugin.jpq.JPQEmbedding`.

Everything a compressed table derives from its parameters and buffers and keeps between reads lives
here, per module, under one size limit in bytes (:data:`CACHE_BYTES`):

- ``"table"``: the decoded ``[N, d]`` table. Built with autograd it is the *per-step table* (every read
  of one training step shares one decode; its gradient flows back to the sub-embeddings); built
  without, the evaluation table. One entry serves both: a read without gradient uses a per-step table
  detached, so the same decode is never held twice.
- ``"faiss_pq"`` / ``"faiss_codes"``: faiss's quantizer (a copy of the sub-embeddings) and packed code
  bytes for the faiss top-k scan.

An entry is reused only while nothing it was built from can have changed:

- every optimizer step moves all caches on (torch.optim's global step hook: any
  ``torch.optim.Optimizer``, also one that writes through ``.data``), and :meth:`DecodeCache.invalidate`
  clears one (the module calls it at ``load_state_dict`` and ``.to()``/``.cuda()``/``.half()``);
- the **stamp** (version counters, data pointers and dtype of the sub-embeddings, codes and row scale)
  moves on at any in-place write to them and when their storage is replaced (``param.data = x``).

Not seen: writes through ``.data`` outside an optimizer step (``param.data.copy_(x)``: ``.data`` has
its own version counter). Call ``module.invalidate_cache()`` after such writes.

Nothing is kept that was built under ``torch.inference_mode`` (inference tensors have no version
counter), and nothing is pickled or copied with the module.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

# The most a module keeps derived from its own tensors between reads, all entries together. A decoded
# table above it is rebuilt per read (a compressed catalogue never holds its full table at rest):
# 64 MiB is a 262k x 64 float32 table.
CACHE_BYTES = 64 * 2**20

_optimizer_steps = 0
_step_hook = None


def _count_optimizer_step(*_args: Any) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def watch_optimizer_steps() -> None:
    """Register (once per process) torch.optim's global post-step hook that moves every cache on."""
    global _step_hook
    if _step_hook is None:
        _step_hook = register_optimizer_step_post_hook(_count_optimizer_step)


def nbytes(value: Any) -> int:
    """Bytes held by a cached value (tensors, numpy arrays, faiss objects by their centroid count)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    centroids = getattr(value, "centroids", None)
    return 4 * int(centroids.size()) if centroids is not None else 0


class DecodeCache:
    """Derived values of one module, valid for one (optimizer step count, stamp); see the module docstring.

    ``stamp_of``: a function of the owner returning the tuple that changes when its tensors do.
    """

    def __init__(self, owner: torch.nn.Module, stamp_of: Callable[[Any], tuple], limit_bytes: int = CACHE_BYTES):
        watch_optimizer_steps()
        self._owner = weakref.ref(owner)
        self._stamp_of = stamp_of
        self.limit_bytes = limit_bytes
        self._key: tuple | None = None  # (optimizer steps, stamp) the entries were built at; None: cleared
        self._entries: dict[str, tuple[Any, int | None]] = {}  # name -> (value, its version when kept)
        self._reads = 0  # reads without gradient since the key last moved
        self._lock = threading.Lock()

    def _current_key(self) -> tuple:
        owner = self._owner()
        return (_optimizer_steps, None if owner is None else self._stamp_of(owner))

    def _sync(self) -> None:
        """Drop every entry when the key moved. Call with the lock held."""
        key = self._current_key()
        if key != self._key:
            self._entries.clear()
            self._reads = 0
            self._key = key

    def peek(self, name: str) -> Any:
        """The entry ``name`` if still valid, else ``None``."""
        with self._lock:
            self._sync()
            entry = self._entries.get(name)
            if entry is None:
                return None
            value, version = entry
            if version is not None and value._version != version:
                del self._entries[name]  # a caller wrote into what it was given: never serve that
                return None
            return value

    def put(self, name: str, value: Any) -> Any:
        """Keep ``value`` under ``name`` if it fits the limit beside the other entries; returns ``value``."""
        if torch.is_inference_mode_enabled():
            return value
        with self._lock:
            self._sync()
            self._entries.pop(name, None)
            if nbytes(value) + sum(nbytes(v) for v, _ in self._entries.values()) <= self.limit_bytes:
                self._entries[name] = (value, value._version if isinstance(value, torch.Tensor) else None)
        return value

    def get(self, name: str, build: Callable[[], Any]) -> Any:
        """The valid entry ``name``, built (and kept if it fits) when missing."""
        value = self.peek(name)
        return value if value is not None else self.put(name, build())

    def fits(self, nbytes_needed: int) -> bool:
        return nbytes_needed <= self.limit_bytes

    def count_read(self) -> int:
        """Count one read without gradient; returns how many there were since the tensors last changed."""
        with self._lock:
            self._sync()
            self._reads += 1
            return self._reads

    def invalidate(self) -> None:
        """Forget every entry (the owner's tensors changed in a way the stamp cannot see)."""
        with self._lock:
            self._entries.clear()
            self._reads = 0
            self._key = None  # no key matches: the next read starts afresh

    def __len__(self) -> int:
        with self._lock:
            self._sync()
            return len(self._entries)

    def __contains__(self, name: str) -> bool:
        return self.peek(name) is not None

"""Reading a checkpoint file: one place, one wording for a file that is missing or not a checkpoint.

RecBole pickles its ``Config`` (and a few classes it references) into every checkpoint, with pickle
protocol 4, which torch's ``weights_only`` reader does not parse. Such files are read with
:class:`_RestrictedUnpickler` instead: it builds only the globals a RecBole or plugin checkpoint
holds (:func:`allowed_global`) and refuses any other, so a crafted file cannot run code on load.
"""

from __future__ import annotations

import os
import pickle
import types
from typing import Any, Iterable

import torch

from urecjpq_plugin.config import URecJPQError


class CheckpointFileError(URecJPQError):
    """A checkpoint path that does not exist, or a file that is not a (complete) torch checkpoint."""


class UntrustedCheckpointError(CheckpointFileError):
    """A checkpoint whose pickle names a global outside the allow-list (it could run code when loaded)."""


# What RecBole/plugin checkpoints pickle besides tensors: RecBole's classes (its Config, enums, the model
# class its config names), yaml's loader classes (Config keeps one), numpy scalars and dtypes, and
# torch's tensor rebuilders. Everything else (os.system, builtins.eval, subprocess ...) is refused.
_ALLOWED_PACKAGES = ("recbole", "yaml.loader")
_ALLOWED = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("builtins", "object"), ("copyreg", "_reconstructor"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("torch", "device"), ("torch", "Size"), ("torch", "dtype"), ("torch.nn.parameter", "Parameter"),
}


def allowed_global(module: str, name: str) -> bool:
    """Whether a checkpoint's pickle may name ``module.name``."""
    if (module, name) in _ALLOWED or any(module == p or module.startswith(p + ".") for p in _ALLOWED_PACKAGES):
        return True
    if module == "numpy.dtypes" or (module == "torch._utils" and name.startswith("_rebuild_")):
        return True
    return module == "torch" and name.endswith("Storage") or (module == "torch" and name in _TORCH_DTYPES)


_TORCH_DTYPES = {n for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)}


class _RestrictedUnpickler(pickle.Unpickler):
    path = "checkpoint"

    def find_class(self, module: str, name: str) -> Any:
        if allowed_global(module, name):
            return super().find_class(module, name)
        raise UntrustedCheckpointError(
            f"{self.path!r} holds {module}.{name}, which no RecBole or plugin checkpoint does; not loaded, as "
            "unpickling it could run code (if you trust the file, load it yourself with torch.load)"
        )


def _restricted_pickle(path: str) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose Unpickler refuses unknown globals."""
    module = types.ModuleType("pickle")  # torch reads pickle_module.__name__ for its protocol handling
    module.Unpickler = type("Unpickler", (_RestrictedUnpickler,), {"path": path})
    module.load = lambda fh, **kw: module.Unpickler(fh, **kw).load()
    return module


def check_checkpoint_path(path: str, written_by: str = "a RecBole or MMRec trainer with the plugin") -> str:
    """``path`` as a string if it names a file; else one line saying it is missing or a directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointFileError(f"checkpoint {path!r} is a directory; give a .pth file written by {written_by}")
    if not os.path.isfile(path):
        raise CheckpointFileError(f"checkpoint {path!r} does not exist; give a .pth file written by {written_by}")
    return path


def read_checkpoint_file(path: str, needs: Iterable[str] = (), weights_only: bool = False,
                         written_by: str = "a RecBole or MMRec trainer with the plugin") -> Any:
    """``torch.load`` on CPU; any unreadable file (truncated, not a checkpoint) is one line, the same everywhere.

    ``needs``: top-level keys the checkpoint must hold. ``weights_only=False`` for host checkpoints
    that pickle their config (RecBole's): read with the allow-listed unpickler (see the module).
    """
    path = check_checkpoint_path(path, written_by)
    try:
        if weights_only:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle(path))
    except UntrustedCheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 (whatever torch/pickle raise, the user gets the same one line)
        reason = str(err).strip().splitlines()[0][:80] if str(err).strip() else type(err).__name__
        raise CheckpointFileError(
            f"{path!r} is not a readable torch checkpoint ({type(err).__name__}: {reason}); "
            f"give a complete .pth file written by {written_by}"
        ) from None
    missing = [k for k in needs if not (isinstance(checkpoint, dict) and k in checkpoint)]
    if missing:
        raise CheckpointFileError(
            f"{path!r} is not a checkpoint of {written_by} (it lacks {', '.join(map(repr, missing))})")
    return checkpoint

"""Reading a checkpoint file: one place, one wording for a file that is missing or not a checkpoint."""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch

from .config import URecJPQError


class CheckpointFileError(URecJPQError):
    """A checkpoint path that does not exist, or a file that is not a (complete) torch checkpoint."""


def read_checkpoint_file(path: str, needs: Iterable[str] = (), weights_only: bool = False,
                         written_by: str = "a RecBole or MMRec trainer with the plugin") -> Any:
    """``torch.load`` on CPU; any unreadable file (truncated, not a checkpoint) is one line, the same everywhere.

    ``needs``: top-level keys the checkpoint must hold. ``weights_only=False`` for host checkpoints
    that pickle their config (RecBole's) -- read only files you trust, as with ``torch.load``.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointFileError(f"checkpoint {path!r} is a directory; give a .pth file written by {written_by}")
    if not os.path.isfile(path):
        raise CheckpointFileError(f"checkpoint {path!r} does not exist; give a .pth file written by {written_by}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
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

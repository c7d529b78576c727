"""Pre-split datasets in MMRec's format, read by RecBole with their own split kept.

Multimodal recommendation datasets (Amazon Baby/Sports/Clothing, TikTok, ...) are published in
MMRec's layout: ``<data_path>/<name>/<name>.inter``, tab-separated with the header
``userID itemID rating timestamp x_label`` where ``x_label`` is 0/1/2 for train/valid/test.
RecBole keeps a given split through ``benchmark_filename``: it reads
``<name>.train.inter``, ``<name>.valid.inter`` and ``<name>.test.inter`` and never re-draws it.

:func:`recbole_presplit` writes those three files (RecBole's typed headers) into a folder of the
plugin's own (never next to the user's data) and returns the RecBole config that reads them.
A converted copy is reused while it is newer than its source.
"""

from __future__ import annotations

import os
from pathlib import Path

from urecjpq_plugin.config import URecJPQError

SPLITS = ("train", "valid", "test")
MMREC_COLUMNS = ("userID", "itemID", "x_label")


class PresplitError(URecJPQError):
    """A pre-split dataset file cannot be read as MMRec's format."""


def cache_root() -> Path:
    """The plugin's one cache folder for files it derives from a user's data: ``$URECJPQ_CACHE`` or
    ``~/.cache/urecjpq`` (never the data's own folder)."""
    return Path(os.environ.get("URECJPQ_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "urecjpq"))


def default_cache() -> Path:
    """Where converted copies go unless a caller names a folder."""
    return cache_root() / "recbole-data"


def mmrec_inter_file(name: str, data_path: str | os.PathLike | None) -> Path | None:
    """``<data_path>/<name>/<name>.inter`` when it is in MMRec's format (an ``x_label`` column), else None."""
    if not data_path:
        return None
    path = Path(os.path.expanduser(str(data_path))) / name / f"{name}.inter"
    if not path.is_file():
        return None
    with open(path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
    return path if all(col in header for col in MMREC_COLUMNS) else None


def _read(path: Path):
    import numpy as np

    with open(path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
    cols = [header.index(c) for c in MMREC_COLUMNS]
    try:
        table = np.loadtxt(path, delimiter="\t", skiprows=1, usecols=cols, dtype=np.int64, ndmin=2)
    except ValueError as err:
        raise PresplitError(f"{path}: {err}; expected integer userID, itemID and x_label columns") from None
    labels = set(np.unique(table[:, 2]).tolist())
    if not labels <= {0, 1, 2} or 0 not in labels:
        raise PresplitError(
            f"{path}: x_label values {sorted(labels)} are invalid; expected 0 (train), 1 (valid), 2 (test), with train rows"
        )
    return table


def recbole_presplit(name: str, data_path: str | os.PathLike, cache: str | os.PathLike | None = None) -> dict:
    """Convert ``<data_path>/<name>/<name>.inter`` (MMRec format) for RecBole; returns config overrides.

    The returned dict sets ``data_path`` to the converted copy, ``benchmark_filename`` to the three
    splits and the columns to load; merge it into RecBole's ``config_dict``.
    """
    source = mmrec_inter_file(name, data_path)
    if source is None:
        raise PresplitError(
            f"{os.path.join(str(data_path), name, name + '.inter')} is not an MMRec-format file "
            f"(tab-separated with columns {', '.join(MMREC_COLUMNS)})"
        )
    root = Path(cache) if cache is not None else default_cache()
    folder = root / name
    targets = [folder / f"{name}.{split}.inter" for split in SPLITS]
    mtime = source.stat().st_mtime
    if not all(t.is_file() and t.stat().st_mtime >= mtime for t in targets):
        table = _read(source)
        folder.mkdir(parents=True, exist_ok=True)
        for label, target in enumerate(targets):
            rows = table[table[:, 2] == label]
            tmp = target.with_suffix(".tmp")
            with open(tmp, "w") as fh:  # RecBole's atomic-file header carries each column's type
                fh.write("user_id:token\titem_id:token\n")
                fh.writelines(f"{u}\t{i}\n" for u, i in rows[:, :2].tolist())
            os.replace(tmp, target)
    return presplit_overrides(root)


def presplit_overrides(cache: str | os.PathLike) -> dict:
    """RecBole config that reads the converted copies under ``cache`` (see :func:`recbole_presplit`)."""
    return {"data_path": str(cache), "benchmark_filename": list(SPLITS), "load_col": {"inter": ["user_id", "item_id"]}}

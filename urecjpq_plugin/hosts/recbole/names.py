"""What RecBole can run, read from its installed files without importing it (checks take milliseconds).

Used to refuse a bad ``--model``/``--dataset``/``--jpq_M`` before RecBole starts (it would end a
30-line traceback, or only fail after another run has trained). The rules are RecBole's own:
``get_model`` imports ``recbole.model.<kind>.<name.lower()>``; a dataset is a folder
``<data_path>/<name>`` with atomic files, or a name in ``properties/dataset/url.yaml`` (downloaded).
"""

from __future__ import annotations

import difflib
import os
import re
from functools import lru_cache
from importlib.util import find_spec

from urecjpq_plugin.config import URecJPQError

MODEL_KINDS = ("general_recommender", "context_aware_recommender", "sequential_recommender",
               "knowledge_aware_recommender", "exlib_recommender")


class RecBoleNameError(URecJPQError):
    """A model or dataset name that RecBole does not have."""


@lru_cache(maxsize=None)
def recbole_root() -> str:
    spec = find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise RecBoleNameError("RecBole is not installed; pip install 'urecjpq_plugin[recbole]'")
    return list(spec.submodule_search_locations)[0]


@lru_cache(maxsize=None)
def model_names() -> dict[str, str]:
    """Lower-case name -> class name of every model RecBole ships."""
    names: dict[str, str] = {}
    for kind in MODEL_KINDS:
        folder = os.path.join(recbole_root(), "model", kind)
        if not os.path.isdir(folder):
            continue
        for file in os.listdir(folder):
            stem, ext = os.path.splitext(file)
            if ext != ".py" or stem.startswith("_"):
                continue
            with open(os.path.join(folder, file), encoding="utf-8", errors="replace") as fh:
                classes = re.findall(r"^class (\w+)\(", fh.read(), flags=re.M)
            names[stem] = next((c for c in classes if c.lower() == stem), stem)
    return names


def check_model(name: str) -> str:
    """Return ``name`` if RecBole has it, else raise with a few close names."""
    names = model_names()
    if names.get(name.lower()) == name:
        return name
    if name.lower() in names:  # RecBole looks the class up by its exact name
        raise RecBoleNameError(f"model {name!r} is not a RecBole model; RecBole's name is {names[name.lower()]!r}")
    close = difflib.get_close_matches(name.lower(), list(names), n=4, cutoff=0.5)
    if close:
        raise RecBoleNameError(f"model {name!r} is not a RecBole model; close names: {', '.join(names[c] for c in close)}")
    raise RecBoleNameError(f"model {name!r} is not a RecBole model; RecBole's models include "
                           f"{', '.join(sorted(names.values())[:6])}, ... ({len(names)} in all)")


def model_embedding_size(name: str) -> int | None:
    """``embedding_size`` from the model's shipped YAML (None if it sets none)."""
    path = os.path.join(recbole_root(), "properties", "model", f"{names_case(name)}.yaml")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        match = re.search(r"^embedding_size:\s*(\d+)", fh.read(), flags=re.M)
    return int(match.group(1)) if match else None


def names_case(name: str) -> str:
    return model_names().get(name.lower(), name)


@lru_cache(maxsize=None)
def downloadable_datasets() -> tuple[str, ...]:
    path = os.path.join(recbole_root(), "properties", "dataset", "url.yaml")
    if not os.path.isfile(path):
        return ()
    with open(path) as fh:
        return tuple(m.group(1) for m in re.finditer(r"^([\w.-]+)\s*:", fh.read(), flags=re.M))


def check_dataset(name: str, data_path: str | None) -> None:
    """Refuse a dataset that is neither a folder under ``data_path`` nor one RecBole can download."""
    roots = [data_path] if data_path else ["dataset"]
    if any(os.path.isdir(os.path.join(os.path.expanduser(r), name)) for r in roots):
        return
    if name in downloadable_datasets():
        return
    close = difflib.get_close_matches(name, downloadable_datasets(), n=3, cutoff=0.6)
    raise RecBoleNameError(
        f"dataset {name!r} is neither a folder in {roots[0]!r} nor one RecBole can download"
        + (f"; close names: {', '.join(close)}" if close else "; e.g. ml-100k (shipped with RecBole)")
    )

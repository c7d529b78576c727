"""RecBole 1.2.1 on today's stack (numpy 2, scipy >= 1.13, pandas 3, Python 3.12, no ray), fixed from the plugin.

RecBole 1.2.1, its newest release, was written against numpy 1, scipy < 1.13, pandas < 3 and ray.
:func:`apply` (called once by the host's ``activate()``) installs each shim below only when the
installed stack lacks what RecBole uses, so on the pinned stack of the ``recbole`` extra nothing
changes. Site-packages are never edited; RecBole's own classes get the replacements.

* ray missing: ``recbole.quick_start`` does ``from ray import tune`` at import time, for
  hyper-parameter search only. A stand-in lets it import; any use of it raises one line.
* scipy >= 1.13 dropped ``dok_matrix._update`` (a bulk ``dict.update``), which RecBole's graph
  models (LightGCN, NGCF, NCL, GCMC, SpectralCF, KGIN, MCCLK) call to fill their adjacency matrix.
* numpy 2 removed ``np.float_``, ``np.complex_``, ``np.unicode_``, which ``Config`` reads to set
  the numpy 1 aliases (``np.float``, ``np.long``, ...) the rest of RecBole uses: every ``Config()``
  fails.
* Python 3.12 removed ``distutils``; thop (RecBole's FLOP count in ``run_recbole``) imports its
  ``LooseVersion``. Where no setuptools provides it, a stand-in holds just that class.
* pandas 3 (copy-on-write): ``df[col].fillna(..., inplace=True)`` no longer changes ``df``, and
  ``Series.agg(len)`` returns the Series' length instead of each row's. RecBole's dataset code uses
  both for missing values and for sequence fields (``token_seq``/``float_seq`` feature columns).
"""

from __future__ import annotations

import functools
import sys
import types
import warnings
from importlib.machinery import ModuleSpec
from importlib.util import find_spec
from typing import Any, Callable

from urecjpq_plugin.config import URecJPQError
from urecjpq_plugin.hosts.base import Patches


class RecBoleExtraMissingError(URecJPQError):
    """A RecBole feature needs a package that is not installed (its stand-in was used)."""


# -- ray --------------------------------------------------------------------------------------------
class _MissingPackage(types.ModuleType):
    """A stand-in for an absent package: importing it works, using any attribute raises one line."""

    def __init__(self, name: str, needed_for: str, install: str) -> None:
        super().__init__(name)
        self.__spec__ = ModuleSpec(name, None, origin="urecjpq_plugin stand-in")
        self.__path__: list[str] = []  # a package: `import ray.tune` finds the submodule in sys.modules
        self._urecjpq_stand_in = (needed_for, install)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # introspection (pickle, inspect, hasattr) sees an ordinary module
            raise AttributeError(attr)
        needed_for, install = self._urecjpq_stand_in
        raise RecBoleExtraMissingError(
            f"{self.__name__}.{attr} is unavailable: {needed_for} needs `{install}`, which is not installed "
            "(training and evaluation do not)"
        )


def ray_stand_in() -> dict[str, types.ModuleType]:
    """Stand-in ``ray`` and ``ray.tune`` modules, keyed by module name."""
    why, install = "RecBole's hyper-parameter search (ray.tune)", "pip install ray"
    ray, tune = _MissingPackage("ray", why, install), _MissingPackage("ray.tune", why, install)
    ray.tune = tune
    return {"ray": ray, "ray.tune": tune}


def _ray_missing() -> bool:
    if "ray" in sys.modules:
        return False
    try:
        return find_spec("ray") is None
    except (ImportError, ValueError):
        return True


# -- scipy >= 1.13 ----------------------------------------------------------------------------------
def dok_update(self: Any, data: dict) -> None:
    """``dok_matrix._update`` as scipy < 1.13 had it: one unchecked ``dict.update`` of the entries.

    RecBole passes ``{(row, col): value}`` for all 2*nnz entries at once; scipy's public ``update``
    checks each key in Python. The entries live in ``_dict`` since 1.13 (before, the matrix was the dict).
    """
    storage = getattr(self, "_dict", None)
    if isinstance(storage, dict):
        storage.update(data)
    else:
        dict.update(self, data)


def _dok_lacks_update() -> bool:
    from scipy.sparse import dok_matrix

    return not hasattr(dok_matrix, "_update")


# -- numpy 2 ----------------------------------------------------------------------------------------
# The aliases RecBole's Config.compatibility_settings sets (and its code uses), from names numpy 2 has.
NUMPY1_ALIASES = {"bool": "bool_", "int": "int_", "float": "float64", "complex": "complex128",
                  "object": "object_", "str": "str_", "long": "int_", "unicode": "str_"}


def set_numpy1_aliases(self: Any = None) -> None:
    """Stand-in for ``Config.compatibility_settings``: the same aliases, without numpy 2's removed names."""
    import numpy as np

    for alias, name in NUMPY1_ALIASES.items():
        setattr(np, alias, getattr(np, name))


def _numpy_lacks_float_() -> bool:
    import numpy as np

    return not hasattr(np, "float_")


# -- pandas 3 ---------------------------------------------------------------------------------------
def fill_nan(self: Any) -> None:
    """RecBole's ``Dataset._fill_nan`` with assignments instead of chained in-place ``fillna``."""
    import numpy as np
    from recbole.utils import FeatureType

    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = feat[field].apply(lambda x: np.array([], dtype=dtype) if isinstance(x, float) else x)


def read_csv_filling_seq(read_csv: Callable[..., Any]) -> Callable[..., Any]:
    """``pandas.read_csv`` that fills missing ``*seq`` columns with "" (what RecBole's ``_load_feat``
    does right after, through a chained in-place ``fillna`` that pandas 3 ignores)."""

    @functools.wraps(read_csv)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        df = read_csv(*args, **kwargs)
        for column in df.columns:
            if str(column).endswith("seq"):  # RecBole's header names: "field:token_seq", "field:float_seq"
                df[column] = df[column].fillna("")
        return df

    return wrapped


def agg_len_per_row(agg: Callable[..., Any]) -> Callable[..., Any]:
    """``Series.agg`` where ``agg(len)`` gives each row's length, as pandas < 3 did."""

    @functools.wraps(agg)
    def wrapped(self: Any, func: Any = None, *args: Any, **kwargs: Any) -> Any:
        if func is len and not args and not kwargs:
            return self.map(len)
        return agg(self, func, *args, **kwargs)

    wrapped._urecjpq_pandas2 = True  # type: ignore[attr-defined]
    return wrapped


def with_pandas2_semantics(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a RecBole dataset method with the two pandas patches above, restored afterwards."""

    @functools.wraps(method)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        import pandas as pd

        if getattr(pd.Series.agg, "_urecjpq_pandas2", False):  # nested (a subclass's super() call)
            return method(*args, **kwargs)
        saved = pd.Series.agg, pd.read_csv
        pd.Series.agg, pd.read_csv = agg_len_per_row(saved[0]), read_csv_filling_seq(saved[1])
        try:
            return method(*args, **kwargs)
        finally:
            pd.Series.agg, pd.read_csv = saved

    return wrapped


def _pandas_chained_fillna_is_lost() -> bool:
    import numpy as np
    import pandas as pd

    df = pd.DataFrame({"a": [np.nan]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df["a"].fillna(0.0, inplace=True)
    return bool(df["a"].isna().iloc[0])


def _pandas_agg_len_aggregates() -> bool:
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return not isinstance(pd.Series([[1, 2], [3]]).agg(len), pd.Series)


# -- Python 3.12 -----------------------------------------------------------------------------------
class LooseVersion:
    """``distutils.version.LooseVersion`` (removed with distutils in Python 3.12; thop, which RecBole's
    ``get_flops`` imports, compares torch versions with it): numbers compare as numbers, words as text."""

    def __init__(self, version: str) -> None:
        import re

        self.vstring = str(version)
        parts = re.split(r"(\d+|[a-z]+|\.)", self.vstring)
        self.version = [int(p) if p.isdigit() else p for p in parts if p and p != "."]

    def __repr__(self) -> str:
        return f"LooseVersion({self.vstring!r})"

    def __str__(self) -> str:
        return self.vstring

    def _other(self, other: Any) -> list:
        return (other if isinstance(other, LooseVersion) else LooseVersion(other)).version

    def __eq__(self, other: Any) -> bool:
        return self.version == self._other(other)

    def __lt__(self, other: Any) -> bool:
        return self.version < self._other(other)

    def __le__(self, other: Any) -> bool:
        return self.version <= self._other(other)

    def __gt__(self, other: Any) -> bool:
        return self.version > self._other(other)

    def __ge__(self, other: Any) -> bool:
        return self.version >= self._other(other)


def distutils_stand_in() -> dict[str, types.ModuleType]:
    """``distutils`` and ``distutils.version`` modules holding only :class:`LooseVersion`."""
    package, version = types.ModuleType("distutils"), types.ModuleType("distutils.version")
    package.__path__ = []
    version.LooseVersion = LooseVersion
    package.version = version
    return {"distutils": package, "distutils.version": version}


def _distutils_missing() -> bool:
    try:
        return find_spec("distutils") is None
    except (ImportError, ValueError):
        return True


# -- entry point ------------------------------------------------------------------------------------
_SHIMS = Patches()
_APPLIED: list[str] | None = None


def apply() -> list[str]:
    """Install every shim the installed stack needs (once); return the names of those installed."""
    global _APPLIED
    if _APPLIED is not None:
        return list(_APPLIED)
    applied = []
    if _ray_missing():  # before anything imports recbole.quick_start
        for name, module in ray_stand_in().items():
            _SHIMS.set_item(sys.modules, name, module)
        applied.append("ray stand-in")
    if _distutils_missing():
        for name, module in distutils_stand_in().items():
            _SHIMS.set_item(sys.modules, name, module)
        applied.append("distutils.version stand-in")
    if _dok_lacks_update():
        from scipy.sparse import dok_matrix

        _SHIMS.set(dok_matrix, "_update", dok_update)
        applied.append("dok_matrix._update")
    if _numpy_lacks_float_():
        from recbole.config import configurator

        # RecBole's own compatibility_settings sets the numpy aliases on every Config; so does this one
        # (without numpy 2's removed names): aliases set while active stay, as RecBole's would
        _SHIMS.set(configurator.Config, "compatibility_settings", set_numpy1_aliases)
        applied.append("numpy 1 aliases")
    from recbole.data.dataset import dataset

    if _pandas_chained_fillna_is_lost():
        _SHIMS.set(dataset.Dataset, "_fill_nan", fill_nan)
        applied.append("Dataset._fill_nan")
    if _pandas_chained_fillna_is_lost() or _pandas_agg_len_aggregates():
        _SHIMS.set(dataset.Dataset, "_from_scratch", with_pandas2_semantics(dataset.Dataset._from_scratch))
        applied.append("pandas 2 semantics while loading datasets")
    _APPLIED = applied
    return list(applied)


def remove() -> None:
    """Undo :func:`apply`: every shim it installed is taken out (the host's ``deactivate()`` calls it)."""
    global _APPLIED
    _SHIMS.undo()
    _APPLIED = None

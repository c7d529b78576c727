"""JPQConfig: the options that drive compression, checked once with clear errors.

Host frameworks pass their flat config (RecBole's ``Config``, MMRec's ``Config``, a dict)
to :meth:`JPQConfig.from_mapping`; the keys are the same in YAML and on the command line::

    jpq: true                 # turn compression on
    jpq_M: auto               # splits per code (auto: embedding size / 4)
    jpq_ksub: 256             # sub-ids per split
    jpq_code_assign: auto     # auto | svd_pq_cos | svd_pq | svd_pq_norm | svd | lightgcn_fit | random | features | features_svd
    jpq_targets: [user, item] # which tables to compress (also: image, text)
    jpq_split_dropout: 0.1    # training: drop each split of a looked-up code at this rate
    jpq_degree_scale: auto    # scale each ID's row by its training degree: sqrt(n / (n + c * mean n)); 0 = off
    jpq_code_weight: 0        # svd_pq* codes: the k-means weighs each ID by (training interactions) ** this; 0 = equal
    jpq_unit_rows: auto       # decode each row at unit length times one learned length per table (auto: sparse data)
    jpq_table_overrides: {item: {ksub: 512}}  # per-table M / ksub (by target), over the two keys above
    jpq_codes_from: null      # a checkpoint of this model trained uncompressed: codes from k-means of its rows
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

CODE_ASSIGNMENTS = ("auto", "svd_pq_cos", "svd_pq", "svd_pq_norm", "svd", "lightgcn_fit", "random", "features",
                    "features_svd")
ID_TARGETS = ("user", "item")
FEATURE_TARGETS = ("image", "text")
TARGETS = ID_TARGETS + FEATURE_TARGETS
AUTO = "auto"
# jpq_M: auto gives each split at most DSUB_AUTO dimensions: more splits at the same trainable parameters
# (ksub * d per table) was the strongest accuracy lever measured (docs/benchmarks.md, "Choosing the
# defaults": d=64, 4 dims per split beat 8 and 2; RecBole's CTR models at d=10: 2 dims beat 5), and uint8
# codes of d/4 bytes keep a checkpoint near 1/16 of the float32 table.
DSUB_AUTO = 4
# jpq_split_dropout's default: 0.1 and 0.25 scored alike (plain-PyTorch BPR on Amazon Baby, 3 seeds:
# recall@20 -7.6 % and -7.8 % vs uncompressed, -10.0 % without); in RecBole the gain is small
# (BPR on Baby -11.0 % -> -10.7 %, on ml-100k +1.0 % over no dropout), and it hurt nowhere measured.
SPLIT_DROPOUT = 0.1
MAX_KSUB = 2**16  # uint16 codes; faiss's IndexPQ export and the README stop here too
# Every key of the plugin's jpq_ namespace (hosts' YAML, --key=value, config_dict): any other
# jpq_* key is a typo and stops the run rather than training with a default.
OPTION_KEYS = ("jpq", "jpq_M", "jpq_ksub", "jpq_code_assign", "jpq_targets", "jpq_split_dropout", "jpq_degree_scale",
               "jpq_code_weight", "jpq_unit_rows", "jpq_tables", "jpq_table_overrides", "jpq_codes_from")
OVERRIDE_KEYS = ("M", "ksub")  # what jpq_table_overrides may set per table


class URecJPQError(ValueError):
    """Base of the plugin's user-facing errors: one line naming the bad value and what is valid."""


class JPQConfigError(URecJPQError):
    """A JPQ option has a value the plugin cannot use."""


def _as_int(key: str, value: Any, allow_auto: bool = False) -> Any:
    """An integer option from YAML / the command line (``"8"``, ``8.0``; ``"auto"`` where ``allow_auto``);
    values of other types pass through to the config's checks."""
    if allow_auto and isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        if isinstance(value, str):
            return int(value.strip())
        if isinstance(value, float) and value.is_integer():
            return int(value)
    except ValueError:
        raise JPQConfigError(f"{key}={value!r} is not an integer") from None
    return value


def auto_M(dim: int) -> int:
    """The fewest splits of at most DSUB_AUTO dims each (``d / 4`` when 4 divides ``d``; d=10 gives 5)."""
    return next(m for m in range(1, dim + 1) if dim % m == 0 and dim // m <= DSUB_AUTO)


def _bool_or_auto(key: str, value: Any) -> bool | str:
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        return parse_bool(value, key)
    except JPQConfigError:
        raise JPQConfigError(f"{key}={value!r} is invalid; use true, false or {AUTO!r}") from None


def parse_bool(value: Any, key: str = "jpq") -> bool:
    """Read a YAML/CLI boolean (``true``, ``True``, ``1``, ``yes`` ...)."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none", ""):
        return False
    raise JPQConfigError(f"{key}={value!r} is not a boolean; use true or false")


def parse_list(value: Any) -> tuple[str, ...]:
    """Accept ``[user, item]``, ``"user,item"`` or ``"['user', 'item']"``."""
    if isinstance(value, str):
        value = value.strip().strip("[]()")
        value = [v.strip().strip("'\"") for v in value.split(",")]
    return tuple(str(v) for v in value if str(v) != "")


@dataclass(frozen=True)
class JPQConfig:
    """Product-quantisation settings for one model (faiss naming: ``M`` splits, ``ksub`` sub-ids)."""

    M: int | str = AUTO
    ksub: int = 256
    code_assign: str = AUTO
    targets: tuple[str, ...] = field(default=ID_TARGETS)
    seed: int = 2020
    split_dropout: float = SPLIT_DROPOUT
    degree_scale: float | str = AUTO  # c of the degree scale (see assign.degree_scales); auto: by density
    code_weight: float = 0.0  # svd_pq* codes: k-means weights IDs by degree ** code_weight (0: all alike)
    unit_rows: bool | str = AUTO  # rows at unit length times one learned length per table; auto: by density and model
    dim: int | None = None  # the tables' width, set by for_dims (svd_pq's SVD rank)
    # Per-target M / ksub, e.g. {"item": {"ksub": 512}} (torchrec's one config per table); stored as
    # sorted tuples so the config stays hashable.
    table_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # A checkpoint of the model trained uncompressed: the ID codes come from k-means of its trained rows
    # (trained_codes.py) instead of jpq_code_assign.
    codes_from: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.M, str) and self.M.strip().lower() == AUTO:
            object.__setattr__(self, "M", AUTO)
        elif isinstance(self.M, bool) or not isinstance(self.M, int) or self.M < 1:
            raise JPQConfigError(f"jpq_M={self.M!r} is invalid; it must be a positive integer or {AUTO!r}")
        if isinstance(self.ksub, bool) or not isinstance(self.ksub, int) or not 2 <= self.ksub <= MAX_KSUB:
            raise JPQConfigError(
                f"jpq_ksub={self.ksub!r} is invalid; it must be an integer in [2, MAX_KSUB={MAX_KSUB}] "
                "(256 fits uint8 codes, 65536 uint16)"
            )
        if self.code_assign not in CODE_ASSIGNMENTS:
            raise JPQConfigError(
                f"jpq_code_assign={self.code_assign!r} is unknown; valid: {', '.join(CODE_ASSIGNMENTS)}"
            )
        if isinstance(self.split_dropout, bool) or not isinstance(self.split_dropout, (int, float)) or not (
            0.0 <= self.split_dropout < 1.0
        ):
            raise JPQConfigError(
                f"jpq_split_dropout={self.split_dropout!r} is invalid; it must be a number in [0, 1) (0 turns it off)"
            )
        if isinstance(self.degree_scale, str) and self.degree_scale.strip().lower() == AUTO:
            object.__setattr__(self, "degree_scale", AUTO)
        elif isinstance(self.degree_scale, bool) or not isinstance(self.degree_scale, (int, float)) or not (
            math.isfinite(self.degree_scale) and self.degree_scale >= 0
        ):
            raise JPQConfigError(
                f"jpq_degree_scale={self.degree_scale!r} is invalid; it must be {AUTO!r} or a number >= 0 (0 turns it off)"
            )
        if isinstance(self.code_weight, bool) or not isinstance(self.code_weight, (int, float)) or not (
            math.isfinite(self.code_weight) and self.code_weight >= 0
        ):
            raise JPQConfigError(
                f"jpq_code_weight={self.code_weight!r} is invalid; it must be a number >= 0 (0 weighs every ID alike)"
            )
        if isinstance(self.unit_rows, str) and self.unit_rows.strip().lower() == AUTO:
            object.__setattr__(self, "unit_rows", AUTO)
        elif not isinstance(self.unit_rows, bool):
            raise JPQConfigError(f"jpq_unit_rows={self.unit_rows!r} is invalid; it must be true, false or {AUTO!r}")
        targets = parse_list(self.targets)
        object.__setattr__(self, "targets", targets)
        if not targets:
            raise JPQConfigError(f"jpq_targets={self.targets!r} is empty; valid: {', '.join(TARGETS)}")
        for target in targets:
            if target not in TARGETS:
                raise JPQConfigError(f"jpq_targets has unknown target {target!r}; valid: {', '.join(TARGETS)}")
        object.__setattr__(self, "table_overrides", self._checked_overrides(self.table_overrides, targets))
        if self.codes_from is not None:
            if not isinstance(self.codes_from, str) or not self.codes_from.strip():
                raise JPQConfigError(f"jpq_codes_from={self.codes_from!r} is invalid; give the path of a checkpoint "
                                     "of this model trained uncompressed")
            if self.code_assign != AUTO:
                raise JPQConfigError(f"jpq_code_assign={self.code_assign!r} and jpq_codes_from={self.codes_from!r} "
                                     "both choose the codes; give one of them")
            if not self.id_targets:
                raise JPQConfigError(f"jpq_codes_from={self.codes_from!r} gives ID codes, but jpq_targets "
                                     f"{list(targets)} has no user or item table")

    def _checked_overrides(self, overrides: Any, targets: tuple[str, ...]) -> tuple:
        if isinstance(overrides, tuple):  # already checked (replace() passes it through)
            overrides = {target: dict(values) for target, values in overrides}
        if not isinstance(overrides, Mapping) or not all(isinstance(v, Mapping) for v in overrides.values()):
            raise JPQConfigError(f"jpq_table_overrides={overrides!r} is invalid; give {{target: {{M: .., ksub: ..}}}}, "
                                 "e.g. {'item': {'ksub': 512}}")
        out = []
        for target, values in overrides.items():
            if target not in targets:
                raise JPQConfigError(f"jpq_table_overrides names {target!r}, which jpq_targets does not compress "
                                     f"(targets: {', '.join(targets)})")
            unknown = sorted(set(map(str, values)) - set(OVERRIDE_KEYS))
            if unknown:
                raise JPQConfigError(f"jpq_table_overrides[{target!r}] has keys {unknown}; a table can override "
                                     f"{', '.join(OVERRIDE_KEYS)}")
            values = {k: _as_int(f"jpq_table_overrides[{target!r}][{k!r}]", v, allow_auto=k == "M")
                      for k, v in values.items()}
            try:
                replace(self, targets=targets, table_overrides={}, **values)
            except JPQConfigError as err:
                raise JPQConfigError(f"jpq_table_overrides[{target!r}]: {err}") from None
            out.append((target, tuple(sorted(values.items()))))
        return tuple(sorted(out))

    def for_table(self, target: str) -> JPQConfig:
        """The settings of one target's tables: ``M`` and ``ksub`` from ``table_overrides`` where it has them."""
        return replace(self, table_overrides={}, **dict(dict(self.table_overrides).get(target, ())))

    def same_for(self, *targets: str) -> bool:
        """Whether these targets share ``M`` and ``ksub`` (tables holding several targets need it)."""
        return len({(c.M, c.ksub) for c in map(self.for_table, targets)}) == 1

    @property
    def id_targets(self) -> tuple[str, ...]:
        return tuple(t for t in self.targets if t in ID_TARGETS)

    @property
    def feature_targets(self) -> tuple[str, ...]:
        return tuple(t for t in self.targets if t in FEATURE_TARGETS)

    def for_dims(self, dims: Iterable[int]) -> JPQConfig:
        """This config for tables of these widths: ``M`` fixed (``auto`` resolved, see :func:`auto_M`) and
        ``dim`` the narrowest width."""
        dims = [int(d) for d in dims]
        dim = min(dims) if dims else self.dim
        M = self.M if self.M != AUTO else (auto_M(math.gcd(*dims)) if dims else 1)
        overrides = tuple((t, tuple((k, auto_M(dim or DSUB_AUTO) if v == AUTO else v) for k, v in vals))
                          for t, vals in self.table_overrides)
        return replace(self, M=M, dim=dim, table_overrides=overrides)

    def check_dim(self, dim: int, table: str = "table") -> None:
        """faiss's rule: the embedding size must split evenly into ``M`` parts."""
        if self.M == AUTO:
            return
        if dim % self.M != 0:
            raise JPQConfigError(
                f"embedding size {dim} of {table} is not a multiple of jpq_M={self.M}; "
                f"choose jpq_M among {[m for m in range(1, dim + 1) if dim % m == 0]}"
            )

    def check_rows(self, rows: int, table: str = "table") -> None:
        """More sub-ids per split than rows would make the "compressed" table larger than the original."""
        if self.ksub > rows:
            raise JPQConfigError(
                f"jpq_ksub={self.ksub} is larger than the {rows} rows of {table}; a compressed table would "
                f"outgrow the original: use jpq_ksub <= {rows}"
            )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | Any, seed: int | None = None) -> JPQConfig:
        """Build from a host config; missing keys take the defaults, an unknown ``jpq_*`` key is an error."""
        check_option_keys(mapping)

        def get(key: str, default: Any) -> Any:
            try:
                value = mapping[key]
            except (KeyError, TypeError):
                return default
            return default if value is None else value

        def as_int(key: str, default: int) -> int:
            return _as_int(key, get(key, default), allow_auto=key == "jpq_M")

        dropout = get("jpq_split_dropout", cls.split_dropout)
        try:
            dropout = float(dropout) if isinstance(dropout, str) else dropout
        except ValueError:
            raise JPQConfigError(f"jpq_split_dropout={dropout!r} is not a number; use a value in [0, 1)") from None
        degree_scale = get("jpq_degree_scale", cls.degree_scale)
        if isinstance(degree_scale, str) and degree_scale.strip().lower() != AUTO:
            try:
                degree_scale = float(degree_scale)
            except ValueError:
                raise JPQConfigError(f"jpq_degree_scale={degree_scale!r} is not a number; use {AUTO!r} or a number >= 0") from None
        code_weight = get("jpq_code_weight", cls.code_weight)
        if isinstance(code_weight, str):
            try:
                code_weight = float(code_weight)
            except ValueError:
                raise JPQConfigError(f"jpq_code_weight={code_weight!r} is not a number; use a number >= 0") from None
        return cls(
            M=as_int("jpq_M", cls.M),
            code_weight=code_weight,
            unit_rows=_bool_or_auto("jpq_unit_rows", get("jpq_unit_rows", cls.unit_rows)),
            split_dropout=dropout,
            degree_scale=degree_scale,
            ksub=as_int("jpq_ksub", cls.ksub),
            code_assign=str(get("jpq_code_assign", cls.code_assign)),
            targets=parse_list(get("jpq_targets", ID_TARGETS)),
            seed=int(seed if seed is not None else get("seed", cls.seed)),
            table_overrides=parse_mapping(get("jpq_table_overrides", {}), "jpq_table_overrides"),
            codes_from=get("jpq_codes_from", None),
        )


def parse_mapping(value: Any, key: str) -> Any:
    """A mapping from YAML, or from its text on a command line (``"{item: {ksub: 512}}"``)."""
    if isinstance(value, str):
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise JPQConfigError(f"{key}={value!r} is not a mapping; write e.g. \"{{item: {{ksub: 512}}}}\"") from None
    return {} if value is None else value


def check_option_keys(mapping: Mapping[str, Any] | Any) -> None:
    """Refuse ``jpq_*`` keys the plugin does not know (a dict, or a host config with ``final_config_dict``)."""
    import difflib

    if not isinstance(mapping, Mapping):
        mapping = getattr(mapping, "final_config_dict", None)
        if not isinstance(mapping, Mapping):
            return
    for key in mapping:
        if isinstance(key, str) and key.startswith("jpq_") and key not in OPTION_KEYS:
            close = difflib.get_close_matches(key, [k for k in OPTION_KEYS if k != "jpq"], n=2, cutoff=0.6)
            raise JPQConfigError(
                f"{key} is not an option of the plugin" + (f"; did you mean {' or '.join(close)}?" if close else "")
                + f" (options: {', '.join(OPTION_KEYS)})"
            )


def jpq_enabled(mapping: Mapping[str, Any] | Any) -> bool:
    """True when the host config sets ``jpq: true``."""
    try:
        value = mapping["jpq"]
    except (KeyError, TypeError):
        return False
    return parse_bool(value)

"""MMRec host: ``--key=value`` arguments read as MMRec's YAML would (launcher and patched ``main.py``)."""

from __future__ import annotations

from typing import Any, Sequence

from urecjpq_plugin.config import URecJPQError


class LauncherError(URecJPQError):
    """Bad command-line input for the launcher."""


def parse_value(text: str) -> Any:
    """A ``--key=value`` value as MMRec's YAML loader would read it (``1e-4`` is a float there too)."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return yaml_number(value)


def yaml_number(value: Any) -> Any:
    """``'1e-4'`` -> ``0.0001``: MMRec's YAML loader reads exponents without a dot as floats, PyYAML as strings."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def overrides_from_argv(rest: Sequence[str]) -> dict:
    """``["--epochs=2", "--jpq"]`` -> ``{"epochs": 2, "jpq": True}``; anything else is an error."""
    out: dict = {}
    for arg in rest:
        if arg == "--jpq":
            out["jpq"] = True
            continue
        if not arg.startswith("--") or "=" not in arg or len(arg.split("=", 1)[0]) <= 2:
            raise LauncherError(f"argument {arg!r} is not understood; valid: --key=value (any MMRec config key) or --jpq")
        key, value = arg[2:].split("=", 1)
        out[key] = parse_value(value)
    return out

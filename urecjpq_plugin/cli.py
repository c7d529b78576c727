"""``urecjpq``: the plugin's commands; each lives in its own module, imported only when run."""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Sequence

from urecjpq_plugin.config import URecJPQError

COMMANDS = {
    "bench": ("urecjpq_bench.run", "train models with and without jpq and report the difference"),
    "bench-scale": ("urecjpq_bench.scale", "synthetic 10^4..10^7-ID memory/speed comparison"),
    "compress": ("urecjpq_plugin.hosts.recbole.compress", "turn a trained uncompressed RecBole or MMRec checkpoint into a JPQ one"),
    "export": ("urecjpq_plugin.export", "export a JPQ item table to a faiss IndexPQ for serving"),
    "tables": ("urecjpq_plugin.hosts.tables_cli", "list the ID tables jpq: true would swap (dry run, no training)"),
    "mmrec-data": ("urecjpq_plugin.data.mmrec_dataset", "make an MMRec dataset from RecBole's ml-100k"),
}


def usage() -> str:
    lines = ["usage: urecjpq COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"urecjpq: error: unknown command {name!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        module = import_module(COMMANDS[name][0])
    except ModuleNotFoundError as err:
        if not COMMANDS[name][0].startswith("urecjpq_bench") or err.name == "urecjpq_bench":
            raise
        print(f"urecjpq {name}: error: {err}", file=sys.stderr)  # an extra is missing: say which
        return 2
    try:
        return int(module.main(rest) or 0)
    except URecJPQError as err:
        print(f"urecjpq {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

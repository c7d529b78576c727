"""The plugin's command-line parser: argparse, with a bad-argument error on one line."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``prog: error: ...``, exit code 2).

    argparse prints the whole usage block before a missing or unknown argument; every other error of
    the plugin's commands is one line naming the bad value, and ``--help`` still shows the usage.
    """

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (--help lists the options)\n")
        sys.exit(2)

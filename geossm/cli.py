"""The ``geossm`` command line (placeholder until the engine lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sys.stderr.write("geossm: no task is installed yet (the training engine lands with issue 5)\n")
    return 1

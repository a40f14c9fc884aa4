"""The ``gdp`` console script. ``gdp --version`` answers without importing torch or Lightning; every other command
goes to :func:`gdp_lightning.cli.main`, whose import of Lightning takes seconds on a small CPU (10 s on two cores
of an AVX2 EPYC)."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from . import __version__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``gdp`` and ``python -m gdp_lightning``; returns the exit status."""
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:
        print(f"gdp {__version__}")
        return 0
    from .cli import main as cli_main

    return cli_main(argv)

"""The ``gdp`` command."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gdp",
        description=(
            "gdp-lightning: restore and enhance images with a pretrained diffusion model as the only prior "
            "(GDP, Fei et al., CVPR 2023). The restoration commands (fit, validate, test, predict) are not "
            "available in this version; `python -m gdp_lightning.sample_prior --help` draws samples from a prior "
            "to check that a checkpoint loads and works."
        ),
    )
    parser.add_argument("--version", action="version", version=f"gdp-lightning {__version__}")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The errors a user can cause (bad options, bad input files): the command line prints their one-line message."""

from __future__ import annotations

__all__ = ["GDPError", "ConfigError", "InputError", "warn", "note"]


class GDPError(Exception):
    """Base of the project's user-facing errors; the message is one line that says what to do."""


class ConfigError(GDPError, ValueError):
    """An option or a combination of options that cannot work."""


class InputError(GDPError, ValueError):
    """An input file (image, mask, kernel, labels) that cannot be used."""


_warned: set = set()


def _first_process() -> bool:
    """Whether this is the first process of a run (Lightning's processes carry their rank in the environment)."""
    import os

    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def warn(message: str) -> None:
    """Print ``gdp: warning: <message>`` on one line to stderr, once per message and on the first process only
    (a warning that the run goes on with: an odd input that is still used)."""
    import sys

    text = " ".join(str(message).split())
    if text in _warned or not _first_process():
        return
    _warned.add(text)
    print(f"gdp: warning: {text}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    """Print ``gdp: <message>`` on one line to stderr, on the first process only (what a run is doing: progress,
    skipped inputs, its summary)."""
    import sys

    if _first_process():
        print(f"gdp: {' '.join(str(message).split())}", file=sys.stderr, flush=True)

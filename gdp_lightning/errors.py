"""The errors a user can cause (bad options, bad input files): the command line prints their one-line message."""

from __future__ import annotations

__all__ = ["GDPError", "ConfigError", "InputError"]


class GDPError(Exception):
    """Base of the project's user-facing errors; the message is one line that says what to do."""


class ConfigError(GDPError, ValueError):
    """An option or a combination of options that cannot work."""


class InputError(GDPError, ValueError):
    """An input file (image, mask, kernel, labels) that cannot be used."""

"""User-facing errors.

Anything a user can cause with bad input (a missing file, a corrupt image, a label out of
range) raises :class:`WsssError` with one line naming the file and the problem. The CLI prints
that line and exits non-zero; a traceback means a bug in wsss, not in the input.
"""

from __future__ import annotations

from pathlib import Path


class WsssError(Exception):
    """An error caused by the user's input or environment, reported as one line."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        text = message if path is None else f"{path}: {message}"
        # One line, always: the CLI prints exactly this.
        super().__init__(" ".join(text.split()))


class DataError(WsssError):
    """The dataset on disk is not what it should be (missing, corrupt, inconsistent)."""


class ConfigError(WsssError):
    """A recipe, an override or an option is invalid."""

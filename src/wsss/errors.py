"""User-facing errors.

Anything a user can cause with bad input (a missing file, a corrupt image, a label out of
range) raises :class:`WsssError` with one line naming the file and the problem. The CLI prints
that line and exits non-zero; a traceback means a bug in wsss, not in the input.

A check that looks at many things (``wsss check-data``, the inputs of ``wsss run``) reports
every problem it finds at once: :func:`problems_error` turns them into one error whose line
counts them and whose :attr:`WsssError.details` lists them (at most :data:`MAX_LISTED`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

MAX_LISTED = 20
"""The most problems an error lists; the rest are counted ("and N more")."""


class WsssError(Exception):
    """An error caused by the user's input or environment, reported as one line.

    Attributes:
        path: the file or folder at fault, if one is.
        details: further lines the CLI prints under the error (the problems of a check that
            found several); empty for an ordinary error.
    """

    def __init__(self, message: str, path: str | Path | None = None, details: Sequence[str] = ()) -> None:
        self.path = None if path is None else Path(path)
        self.details = tuple(" ".join(str(line).split()) for line in details)
        text = message if path is None else f"{path}: {message}"
        # One line, always: the CLI prints exactly this.
        super().__init__(" ".join(text.split()))


class DataError(WsssError):
    """The dataset on disk is not what it should be (missing, corrupt, inconsistent)."""


class ConfigError(WsssError):
    """A recipe, an override or an option is invalid."""


def problems_error(problems: Sequence[WsssError], what: str, limit: int = MAX_LISTED) -> WsssError:
    """One error for the ``problems`` a check found in ``what`` (e.g. "in the recipe's inputs").

    A single problem is returned as it is (its class, path and line unchanged). Several become
    one error of the first problem's class (``WsssError`` if they mix classes) whose line says
    how many there are and whose details list the first ``limit`` of them, then "and N more".

    Raises:
        ValueError: ``problems`` is empty.
    """
    if not problems:
        raise ValueError("problems_error needs at least one problem")
    if len(problems) == 1:
        return problems[0]
    kinds = {type(problem) for problem in problems}
    cls = kinds.pop() if len(kinds) == 1 else WsssError
    lines = [str(problem) for problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"and {len(problems) - limit} more")
    return cls(f"{len(problems)} problems {what}:", details=lines)

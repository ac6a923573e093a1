"""The exceptions torchgraft raises for problems a user can fix.

The CLI turns a `UserError` into a one-line message and exit status 2, a `GraftRuntimeError`
into exit status 1; neither shows a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GraftError(Exception):
    """Base class for every error torchgraft explains to its user."""

    exit_code = 1


class UserError(GraftError):
    """Bad input: a path, a name or a value the user gave. Fixable by changing the input."""

    exit_code = 2


class GraftRuntimeError(GraftError):
    """Something failed while running with valid input (out of memory, a broken file)."""

    exit_code = 1


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """A ' Did you mean X?' suffix when `value` is close to one of `allowed`, else ''."""
    matches = difflib.get_close_matches(value, list(allowed), n=1, cutoff=0.6)
    return f" Did you mean {matches[0]!r}?" if matches else ""

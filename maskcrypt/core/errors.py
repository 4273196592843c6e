"""The one exception type users see.

Every user-facing failure raises :class:`MaskcryptError` with a message that names
the file or field at fault and what was expected. The CLI prints the message
without a traceback and exits non-zero; anything else escaping is a bug.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class MaskcryptError(Exception):
    """A failure caused by the user's input or environment, with a message that says how to fix it."""


def exit_status(body: Callable[[], int | None]) -> int:
    """Run a command's body: its status (None = 0), or 2 with one ``error:`` line for a MaskcryptError.

    The one place where jobs and the CLI turn a user-facing failure into an exit status.
    """
    try:
        return int(body() or 0)
    except MaskcryptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

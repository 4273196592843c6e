"""The one exception type users see.

Every user-facing failure raises :class:`MaskcryptError` with a message that names
the file or field at fault and what was expected. The CLI prints the message
without a traceback and exits non-zero; anything else escaping is a bug.
"""

from __future__ import annotations


class MaskcryptError(Exception):
    """A failure caused by the user's input or environment, with a message that says how to fix it."""

"""One exception type for every user-facing problem.

The CLI prints ``SaeguardError`` as a single line (problem + fix) instead of a
traceback, so every check that guards user input raises it.
"""

from __future__ import annotations


class SaeguardError(Exception):
    """A problem with the user's input or environment, with a fix in the message."""


def require(condition: bool, message: str) -> None:
    """Raise ``SaeguardError(message)`` unless ``condition`` holds."""
    if not condition:
        raise SaeguardError(message)

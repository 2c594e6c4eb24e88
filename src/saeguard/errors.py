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


def one_line(error: BaseException, limit: int = 300) -> str:
    """A library exception's message as one line, to quote inside a ``SaeguardError``.

    Lines are joined with spaces and the result is cut to ``limit`` characters
    (with "…"); a trailing period is dropped so the caller can append "; fix".
    An empty message gives the exception's class name.
    """
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip()).rstrip(".")
    text = text or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class CalibrationWarning(UserWarning):
    """A fit whose retain side is too small or degenerate to calibrate the gate on.

    Emitted (``warnings.warn``) by the core after selection and calibration, so
    API users see it too; the CLI prints it as one yellow line. The message
    names what was measured and what to add (more retain text).
    """

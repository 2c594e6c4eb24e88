"""Keep other libraries' warnings and log lines off a command's stderr; saeguard's own still show.

A command's stderr is for the user: one ``error:`` line, ``note:`` lines and saeguard's own
``WARNING:`` lines (a :class:`~saeguard.errors.CalibrationWarning`, settings an artifact holds
that this version ignores). Deprecation notices and log lines of sae_lens, transformer_lens,
transformers, torch, datasets or huggingface_hub are for their callers' developers, not for
someone running ``saeguard fit``; they are dropped (issue 11 §4: an error is one line). Running
Python with ``-W`` or ``PYTHONWARNINGS`` shows every warning as Python prints it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import TextIO

import typer

PACKAGE = Path(__file__).resolve().parents[1]
"""The saeguard package folder: a warning issued by code in it is saeguard's own."""
QUIET_CATEGORIES: tuple[type[Warning], ...] = (
    DeprecationWarning,
    PendingDeprecationWarning,
    FutureWarning,
    ImportWarning,
    ResourceWarning,
)
"""Warnings for developers (whoever issues them): never shown to a command's user."""
LIBRARY_VERBOSITY = {
    "transformers": "TRANSFORMERS_VERBOSITY",
    "datasets": "DATASETS_VERBOSITY",
    "huggingface_hub": "HF_HUB_VERBOSITY",
}
"""Libraries that set their own logger's level from an environment variable when imported."""
LIBRARY_LOGGERS = ("sae_lens", "transformer_lens", "torch", "accelerate", "lm_eval")
"""Other libraries' loggers kept at ERROR (the root logger too)."""
_WARNINGS_FILES = {Path(warnings.__file__).resolve(), Path(__file__).resolve()}


def _inside_package(filename: str) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(PACKAGE)
    except (OSError, ValueError):
        return False


def _issuer(frame: FrameType | None) -> str | None:
    """The file of the first frame outside the warnings machinery: the one that called ``warn``."""
    while frame is not None and Path(frame.f_code.co_filename).resolve() in _WARNINGS_FILES:
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else None


def is_saeguard_warning(category: type[Warning], filename: str, issuer: str | None = None) -> bool:
    """Whether a warning is saeguard's own, to show a command's user.

    Args:
        category: the warning's class.
        filename: the file the warning is attributed to (after ``stacklevel``).
        issuer: the file whose code called ``warnings.warn``, when known (a library warning
            with ``stacklevel=2`` is attributed to its saeguard caller but issued by the library).

    Returns:
        True for a warning class defined in saeguard (``CalibrationWarning``), or for another
        warning that is not in :data:`QUIET_CATEGORIES`, attributed to and issued by saeguard code.
    """
    if category.__module__.partition(".")[0] == "saeguard":
        return True
    if issubclass(category, QUIET_CATEGORIES):
        return False
    return _inside_package(filename) and (issuer is None or _inside_package(issuer))


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` for commands: saeguard's own as one ``WARNING:`` line, the rest dropped."""
    if is_saeguard_warning(category, filename, _issuer(sys._getframe(1))):
        typer.secho(f"WARNING: {' '.join(str(message).split())}", fg=typer.colors.YELLOW, err=True)


def quiet_libraries() -> None:
    """Route warnings through :func:`show_warning` and keep library loggers at ERROR.

    Called once by the ``saeguard`` entry point. saeguard's own loggers (``saeguard.*``) keep
    WARNING; uvicorn's (``saeguard serve``) are configured by uvicorn itself. A verbosity set in
    ``TRANSFORMERS_VERBOSITY`` (``DATASETS_VERBOSITY``, ``HF_HUB_VERBOSITY``) is kept; with ``-W``
    or ``PYTHONWARNINGS`` given, warnings are left to Python.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars only
    for name, variable in LIBRARY_VERBOSITY.items():
        if variable not in os.environ:  # a level the user chose wins
            os.environ[variable] = "error"  # read by those imported later
            logging.getLogger(name).setLevel(logging.ERROR)  # those imported already
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("saeguard").setLevel(logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if not sys.warnoptions:
        warnings.showwarning = show_warning

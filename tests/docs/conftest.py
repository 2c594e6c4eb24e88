"""Fixtures of the docs tests: a working folder per document and the tiny stand-in cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .docs_standin import build_standin, remove_standin


@pytest.fixture(scope="session")
def standin_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ``$SAEGUARD_CACHE`` holding the tiny stand-in default model and SAE (built once per session)."""
    target = tmp_path_factory.mktemp("standin-cache")
    build_standin(target)
    yield target
    remove_standin(target)


@pytest.fixture(scope="session")
def workdirs(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    """One working folder per document, created on first use (blocks of a document share it)."""
    return {}

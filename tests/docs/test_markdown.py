"""Every ```python and ```bash block of README.md and docs/*.md runs as written (issue 12 §1).

How a block runs (as written, on the tiny stand-in, or skipped with a reason)
is said by an HTML comment before it; see ``docs_blocks.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from saeguard.defaults import DEFAULT_SAES_ENV

from .docs_blocks import RUN_LANGUAGES, Block, collect, documents, fence_languages
from .docs_standin import standin_saes

BLOCKS = collect()
RUNNABLE_ALIASES = {"py", "python3", "sh", "shell", "console", "zsh"}


@pytest.mark.integration
@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_code_block_runs_as_written(
    block: Block,
    request: pytest.FixtureRequest,
    workdirs: dict[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if block.document not in workdirs:
        workdirs[block.document] = tmp_path_factory.mktemp(block.document.stem)
    monkeypatch.chdir(workdirs[block.document])
    if block.mode == "tiny":
        standin = request.getfixturevalue("standin_cache")
        monkeypatch.setenv("SAEGUARD_CACHE", str(standin))
        monkeypatch.setenv(DEFAULT_SAES_ENV, str(standin_saes(standin)))  # not the shipped SAE
    block.run()


def test_every_python_and_bash_block_is_collected() -> None:
    """No block escapes the test: each fenced python/bash block is one case, in every document."""
    for path in documents():
        fenced = [language for language in fence_languages(path) if language in RUN_LANGUAGES]
        collected = [block.language for block in BLOCKS if block.document == path]
        assert collected == fenced, path


def test_no_runnable_block_hides_under_another_language_name() -> None:
    """A ```sh or ```py block would not be run: the docs use python and bash only."""
    for path in documents():
        hidden = set(fence_languages(path)) & RUNNABLE_ALIASES
        assert not hidden, f"{path}: use ```python or ```bash (found {sorted(hidden)})"


def test_readme_python_example_runs_on_the_standin_and_cli_block_is_covered() -> None:
    """The README's API example and CLI section are run (on the stand-in), not skipped."""
    readme = [block for block in BLOCKS if block.document.name == "README.md"]
    tiny = [block.language for block in readme if block.mode == "tiny" and not block.before]
    assert "python" in tiny and "bash" in tiny

"""The code blocks of README.md and docs/*.md, parsed with Sybil, and how each one is run.

Every ```python and ```bash block is a test case. HTML comments just before a
block (invisible on GitHub) say how it runs:

- ``<!-- skip: next "reason" -->``: not run, reported as skipped with the reason
  (e.g. it needs a GPU or the Hugging Face hub); Sybil's own skip directive,
  also ``<!-- skip: next if(not default_sae_ready, reason="...") -->``.
- ``<!-- docs-test: tiny -->``: run on the tiny random stand-in for the default
  model and SAE (``docs_standin.py``): ``$SAEGUARD_CACHE`` points at it, so the
  block's ``default`` names resolve to the stand-in and it runs as written, in
  seconds to minutes, without training the default SAE. Put it before a skip
  directive, never between a skip directive and its block.
- nothing: run as written on the real default model and the user's cache.

Python blocks share one namespace per document, in order; bash blocks run with
``bash -euo pipefail`` and the project's ``saeguard`` on ``PATH``. Both run in a
fresh working folder per document, so files they write (``guards/bio``) stay there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unittest
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sybil import Document, Example, Region, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown import CodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer

from saeguard.defaults import default_sae_ready

ROOT = Path(__file__).resolve().parents[2]
RUN_LANGUAGES = ("python", "bash")
MODES = ("tiny",)
BASH_TIMEOUT_S = 7200  # a block of CLI commands on a busy 2-core machine
TAIL = 4000  # characters of a failing block's output shown


def documents() -> list[Path]:
    """README.md and every docs/*.md, in a fixed order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


class ModeParser:
    """``<!-- docs-test: MODE -->``: how the next code block runs (see the module docstring)."""

    def __init__(self) -> None:
        self.lexer = DirectiveInHTMLCommentLexer(directive="docs-test", arguments=r"\S+")

    def __call__(self, document: Document) -> list[Region]:
        regions = []
        for lexed in self.lexer(document):
            mode = str(lexed.lexemes["arguments"]).strip()
            if mode not in MODES:
                raise ValueError(f"{document.path}: unknown docs-test mode {mode!r}; use one of {MODES}")
            regions.append(Region(lexed.start, lexed.end, parsed=mode, evaluator=None))
        return regions


def run_bash(example: Example) -> None:
    """Run a bash block in the current folder with the current environment; fail with its output."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("COLUMNS", "150")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", str(example.parsed)],
        cwd=os.getcwd(),
        env=env,
        capture_output=True,
        text=True,
        timeout=BASH_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"bash block at {example.path}:{example.line} exited {result.returncode}\n"
            f"--- stdout (end) ---\n{result.stdout[-TAIL:]}\n--- stderr (end) ---\n{result.stderr[-TAIL:]}"
        )


def _namespace(namespace: dict) -> None:
    """What skip conditions can read: ``default_sae_ready`` (the default SAE is trained and cached)."""
    namespace["default_sae_ready"] = default_sae_ready()


SYBIL = Sybil(
    parsers=[
        SkipParser(),
        ModeParser(),
        CodeBlockParser("python", PythonEvaluator()),
        CodeBlockParser("bash", run_bash),
    ]
)


@dataclass
class Block:
    """One runnable code block and the directives before it (evaluated first, in order)."""

    document: Path
    line: int
    language: str
    mode: str | None
    example: Example
    before: list[Example] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}:{self.language}"

    def run(self) -> None:
        """Evaluate the directives before the block, then the block; a skip names the block."""
        try:
            for directive in self.before:
                directive.evaluate()
            self.example.evaluate()
        except unittest.SkipTest as skipped:
            pytest.skip(f"{self.id}: {skipped}")


def _language(example: Example) -> str | None:
    evaluator = example.region.evaluator
    if evaluator is run_bash:
        return "bash"
    if isinstance(evaluator, PythonEvaluator):
        return "python"
    return None


def collect(paths: list[Path] | None = None) -> list[Block]:
    """Every runnable block of ``paths`` (default: :func:`documents`), with its mode and directives."""
    blocks: list[Block] = []
    for path in paths or documents():
        document = SYBIL.parse(path)
        _namespace(document.namespace)
        pending: list[Example] = []
        mode = None
        for example in document.examples():
            language = _language(example)
            if example.region.evaluator is None:  # a docs-test directive: applies to the next block
                mode = str(example.parsed)
                continue
            if language is None:  # a skip directive: evaluated just before its block
                pending.append(example)
                continue
            blocks.append(Block(path, example.line, language, mode, example, pending))
            pending, mode = [], None
    return blocks


FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+-]*)", re.MULTILINE)


def fence_languages(path: Path) -> list[str]:
    """The info-string language of every opening fence in ``path`` ('' for none), in order."""
    languages, open_fence = [], None
    for match in FENCE.finditer(path.read_text(encoding="utf-8")):
        fence, language = match.group(1), match.group(2)
        if open_fence is None:
            languages.append(language)
            open_fence = fence
        elif fence[0] == open_fence[0] and len(fence) >= len(open_fence) and not language:
            open_fence = None
    return languages

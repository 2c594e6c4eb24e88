"""Report pages: a small page model rendered by one jinja2 template (HTML) or as markdown.

Every HTML report of saeguard (sweep ``index.html``, comparison ``index.html``,
``demo.html``) is a :class:`Page` rendered through ``templates/page.html.j2``,
which extends the one styled ``base.html.j2``; autoescaping is on, so user
strings (corpus names, prompts, generations) can never inject markup.
:func:`write_page` refuses a page that says nothing about what it holds, an
empty section, or an image that is not in the report folder, and writes the
file atomically (``io.write_text_atomic``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import ClassVar

import jinja2

from saeguard._version import __version__
from saeguard.errors import require
from saeguard.io import write_text_atomic

_NUMBER = re.compile(r"^(-|[-+]?[\d.]+(e[-+]?\d+)?%?( \(n=\d+\)| / \d+)?|- \(n=\d+\))$")


@dataclass(frozen=True)
class Link:
    """A navigation link: ``href`` is relative to the page (e.g. ``"index.html"``)."""

    label: str
    href: str


@dataclass(frozen=True)
class Figure:
    """An image in the report folder (``src`` relative to the page) with a caption saying what it shows."""

    kind: ClassVar[str] = "figure"
    src: str
    caption: str
    alt: str = ""


@dataclass(frozen=True)
class Table:
    """A table of preformatted cells; every row has one cell per header column."""

    kind: ClassVar[str] = "table"
    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str = ""

    def numeric(self) -> list[bool]:
        """Per column: every cell is a number, a count or "-" (right-aligned, not wrapped)."""
        return [all(_NUMBER.match(row[i]) for row in self.rows) for i in range(len(self.header))]


@dataclass(frozen=True)
class Sample:
    """One worked example (e.g. a prompt and its outputs): ``fields`` are (label, text) pairs.

    ``badge`` is a short state shown beside the title ("flagged"); ``alert`` colours it as a warning.
    """

    kind: ClassVar[str] = "sample"
    title: str
    fields: Sequence[tuple[str, str]]
    badge: str = ""
    alert: bool = False


@dataclass(frozen=True)
class Tokens:
    """A line of tokens, each shaded by a weight in [0, 1] (e.g. a latent's activation / its maximum).

    ``notes`` (one per token, or none) are shown on hover; ``mark`` outlines one token (the
    token of interest, e.g. where a latent peaks). Token strings are escaped like any text.
    """

    kind: ClassVar[str] = "tokens"
    label: str
    tokens: Sequence[str]
    weights: Sequence[float]
    notes: Sequence[str] = ()
    mark: int | None = None


Block = Figure | Table | Sample | Tokens


@dataclass(frozen=True)
class Section:
    """A titled part of a page: paragraphs, then blocks (figures, tables, samples) in order."""

    title: str
    paragraphs: Sequence[str] = ()
    blocks: Sequence[Block] = ()
    links: Sequence[Link] = ()  # shown under the paragraphs (e.g. a latent's Neuronpedia page)


@dataclass(frozen=True)
class Page:
    """A whole report page; ``summary`` says in one or two sentences what the page holds."""

    title: str
    summary: str
    sections: Sequence[Section] = ()
    notes: Sequence[str] = ()  # further paragraphs under the summary (setup, rules, caveats)
    nav: Sequence[Link] = field(default_factory=tuple)


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("saeguard.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def with_n(value: float | None, n: int | None, digits: int = 3) -> str:
    """``"0.750 (n=4)"``: a rate with the item count it rests on; ``"-"`` when there is no value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-" if n is None else f"- (n={n})"
    return f"{value:.{digits}f}" + ("" if n is None else f" (n={n})")


def percent_with_n(value: float | None, n: int | None) -> str:
    """``"75.0% (n=4)"``; ``"-"`` for a missing or NaN rate (e.g. no known items)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-" if n is None else f"- (n={n})"
    return f"{100 * value:.1f}%" + ("" if n is None else f" (n={n})")


def _check(page: Page) -> None:
    require(bool(page.title.strip()), "a report page needs a title")
    require(
        bool(page.summary.strip()), f"report page {page.title!r} does not say what it holds: give a summary"
    )
    for section in page.sections:
        require(
            bool(section.paragraphs or section.blocks),
            f"section {section.title!r} of {page.title!r} is empty: leave it out or give it content",
        )
        for block in section.blocks:
            if isinstance(block, Table):
                require(bool(block.rows), f"table in {section.title!r} has no rows: leave it out")
                bad = [row for row in block.rows if len(row) != len(block.header)]
                require(
                    not bad,
                    f"a row of the {section.title!r} table has {len(bad[0]) if bad else 0} "
                    f"cells for {len(block.header)} columns: give one cell per column",
                )
            if isinstance(block, Tokens):
                require(
                    len(block.weights) == len(block.tokens)
                    and (not block.notes or len(block.notes) == len(block.tokens)),
                    f"a token line in {section.title!r} needs one weight (and note) per token",
                )
                require(
                    all(0.0 <= w <= 1.0 for w in block.weights),
                    f"token weights in {section.title!r} must lie in [0, 1]: divide by the maximum",
                )
            if isinstance(block, Figure):
                src = PurePosixPath(block.src)
                require(
                    not src.is_absolute() and ".." not in src.parts,
                    f"figure {block.src!r} must be a path inside the report folder, relative to the page",
                )


def render_html(page: Page) -> str:
    """The page as a standalone HTML document (inline CSS, relative image paths).

    Raises:
        SaeguardError: the page has no summary, an empty section or table, or a figure outside its folder.
    """
    _check(page)
    return _ENV.get_template("page.html.j2").render(page=page, version=__version__)


def _md_cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def render_markdown(page: Page) -> str:
    """The same page as markdown (GitHub tables; figures as images followed by their caption)."""
    _check(page)
    out = [f"# {page.title}", page.summary, *page.notes]
    if page.nav:
        out.append(" · ".join(f"[{link.label}]({link.href})" for link in page.nav))
    for section in page.sections:
        out += [f"## {section.title}", *section.paragraphs]
        out += [f"[{link.label}]({link.href})" for link in section.links]
        for block in section.blocks:
            if isinstance(block, Tokens):
                text = "".join(f"**{t}**" if i == block.mark else t for i, t in enumerate(block.tokens))
                out.append(f"{block.label}: {_md_cell(text)}")
            elif isinstance(block, Figure):
                out.append(f"![{block.alt or block.caption}]({block.src})\n\n*{block.caption}*")
            elif isinstance(block, Table):
                lines = ["| " + " | ".join(_md_cell(h) for h in block.header) + " |"]
                lines.append("|" + "---|" * len(block.header))
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                out.append(("*" + block.caption + "*\n\n" if block.caption else "") + "\n".join(lines))
            else:
                badge = f" ({block.badge})" if block.badge else ""
                out.append(
                    f"**{block.title}**{badge}\n\n" + "\n".join(f"- {k}: {v}" for k, v in block.fields)
                )
    return "\n\n".join(out) + "\n"


def write_page(page: Page, path: str | Path, *, markdown: str | Path | None = None) -> Path:
    """Render ``page`` to ``path`` (HTML) and optionally ``markdown``; returns the HTML path.

    Raises:
        SaeguardError: as :func:`render_html`, or a figure whose file is not beside the page
            (write the figures first).
    """
    path = Path(path).expanduser()
    for section in page.sections:
        for block in section.blocks:
            if isinstance(block, Figure):
                require(
                    (path.parent / block.src).is_file(),
                    f"figure {block.src} is missing from {path.parent}: write it before the page",
                )
    text = render_html(page)
    if markdown is not None:
        write_text_atomic(markdown, render_markdown(page))
    return write_text_atomic(path, text)

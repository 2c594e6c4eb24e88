"""An experiment's outputs: ``<name>.json`` (typed result), plots, ``index.html`` and ``<name>.md``.

Every experiment writes the same kind of folder through :func:`write_experiment`: the
result as JSON, its figures (PNG, matplotlib ``Figure`` objects, no pyplot state), and one
report page (``saeguard.report``: the one jinja2 template every report uses) that opens
with the experiment's threat model and its headline numbers against the targets of
issue 15. Files are written atomically, so a crash never leaves half a report.
:func:`finish` is how every experiment ends: its result from the :class:`Setup`, then the folder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from saeguard.core.sae import sae_source
from saeguard.experiments.common import RECORDS_FILE, Setup
from saeguard.experiments.harness import Scores
from saeguard.experiments.settings import settings_dict
from saeguard.hf.fingerprint import model_identity
from saeguard.io import write_json
from saeguard.report import Figure as PageFigure
from saeguard.report import Page, Section, Table, with_n, write_page
from saeguard.report.figures import save_figure
from saeguard.runs.grid import GridCounts

HTML_FILE = "index.html"


@dataclass
class Headline:
    """One headline number and the target it is judged against (``met`` None: no target)."""

    label: str
    value: float | None
    target: str = ""
    met: bool | None = None


@dataclass
class ExperimentResult:
    """What an experiment run wrote: settings, setup, the threat model, headlines and every record."""

    experiment: str
    config: dict[str, Any]
    context: str
    model: dict[str, str]
    sae: dict[str, Any] | None
    known: dict[str, dict[str, int]]  # per question set: items asked and known
    threat_model: str
    headlines: list[Headline]
    records: list[Any]  # the experiment's typed records, in grid order
    computed: int
    skipped: int
    seconds: float
    output: str
    notes: list[str] = field(default_factory=list)
    kind: str = "saeguard-experiment"
    version: int = 1

    @property
    def path(self) -> Path:
        return Path(self.output) / f"{self.experiment}.json"


def bounded(label: str, value: float | None, bound: float, *, at_most: bool) -> Headline:
    """A headline judged against ``bound``: met iff value <= (``at_most``) or >= bound; None without value."""
    met = None if value is None else (value <= bound if at_most else value >= bound)
    return Headline(label, value, f"{'<=' if at_most else '>='} {bound:.3g}", met)


def num(value: float | None, digits: int = 3) -> str:
    """A table cell for a number; ``-`` for none."""
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def or_nan(value: float | None) -> float:
    """A plotted value: NaN (a gap in the line) for a set without items."""
    return math.nan if value is None else value


def accuracy_cell(scores: Scores | None, names: Sequence[str]) -> str:
    """Pooled accuracy of ``names`` with its item count, e.g. ``0.250 (n=40)``."""
    if scores is None:
        return "-"
    return with_n(scores.accuracy(names), scores.items(names))


def headline_table(headlines: Sequence[Headline]) -> Table:
    rows = [
        [h.label, num(h.value), h.target or "-", {True: "yes", False: "no", None: "-"}[h.met]]
        for h in headlines
    ]
    return Table(["headline", "value", "target", "met"], rows, caption="Targets: issue 15.")


def finish(
    setup: Setup,
    records: list[Any],
    counts: GridCounts,
    headlines: list[Headline],
    *,
    threat_model: str,
    notes: list[str],
    title: str,
    summary: str,
    sections: Sequence[Section],
    figures: Mapping[str, tuple[Figure, str]],
) -> ExperimentResult:
    """The run's :class:`ExperimentResult` (setup, settings, ``records`` in grid order), written out.

    Raises:
        SaeguardError: an empty section or table (``saeguard.report.write_page``).
    """
    result = ExperimentResult(
        experiment=setup.name,
        config=settings_dict(setup.config),
        context=setup.context,
        model=model_identity(setup.model),
        sae=sae_source(setup.sae_spec, setup.sae) if setup.sae is not None else None,
        known=setup.harness.known,
        threat_model=threat_model,
        headlines=headlines,
        records=records,
        computed=counts.computed,
        skipped=counts.skipped,
        seconds=time.perf_counter() - setup.started,
        output=str(setup.output),
        notes=notes,
    )
    write_experiment(result, title=title, summary=summary, sections=sections, figures=figures)
    return result


def write_experiment(
    result: ExperimentResult,
    *,
    title: str,
    summary: str,
    sections: Sequence[Section],
    figures: Mapping[str, tuple[Figure, str]],
) -> Path:
    """Write ``<experiment>.json``, each figure (file name -> (figure, caption)), the page; returns the JSON.

    The page is ``index.html`` plus ``<experiment>.md``; the figures come first on it.

    Raises:
        SaeguardError: an empty section or table (``saeguard.report.write_page``).
    """
    out = Path(result.output)
    path = write_json(result.path, result)
    blocks = []
    for name, (figure, caption) in figures.items():
        save_figure(figure, out / name)
        blocks.append(PageFigure(name, caption, alt=caption))
    setup = ", ".join(f"{name} {k['known']}/{k['total']}" for name, k in result.known.items())
    notes = [
        f"Threat model: {result.threat_model}",
        f"Model {result.model.get('name')}; question sets (known/asked): {setup}.",
        *result.notes,
        f"Run: {result.computed} points computed, {result.skipped} resumed from {RECORDS_FILE}, "
        f"{result.seconds:.0f} s.",
    ]
    # no headline (every point failed, or nothing to compare yet): the page says so instead
    headline_blocks: list[Any] = [headline_table(result.headlines)] if result.headlines else []
    if not result.headlines:
        notes.append("No headline: no point of the grid produced the numbers it needs (see the records).")
    page_sections = [Section("Headlines", blocks=headline_blocks)] if headline_blocks else []
    if blocks:
        page_sections.append(Section("Figures", blocks=blocks))
    page = Page(title=title, summary=summary, notes=notes, sections=[*page_sections, *sections])
    write_page(page, out / HTML_FILE, markdown=out / f"{result.experiment}.md")
    return path

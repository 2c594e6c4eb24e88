"""A report folder: forget-vs-utility Pareto plot, rho distributions with tau, per-config table.

Writes ``index.html`` and ``report.md`` from one page (``saeguard.report``: images
referenced by relative paths, so the folder can be moved or attached) and the PNGs;
every file is written via a temporary file and renamed, so a crash never leaves a
half-written page. Every accuracy is shown with the number of items it rests on.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from saeguard.config import Clamp, GateStatisticKind
from saeguard.errors import require
from saeguard.eval.score import UnlearningScore
from saeguard.io import write_json
from saeguard.report import Figure as PageFigure
from saeguard.report import Link, Page, Section, Table, percent_with_n, with_n, write_page
from saeguard.report.figures import plot_rho, plottable, rho_label, save_figure
from saeguard.runs.sweep import DatasetMetrics, SweepRecord, read_records, sweep_score

if TYPE_CHECKING:
    from saeguard.core.guardrail import Guardrail
    from saeguard.eval.text import TextMetricsResult

PARETO_FILE = "pareto.png"
RHO_FILE = "rho.png"
INDEX_FILE = "index.html"
MARKDOWN_FILE = "report.md"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of (forget, utility) points no other point beats on both (lower forget, higher utility)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(
    records: Sequence[SweepRecord], path: Path, *, utility_threshold: float = 0.99, best: str | None = None
) -> None:
    usable = [
        (r.forget_accuracy, r.utility_accuracy, r.point)
        for r in records
        if r.point is not None and r.forget_accuracy is not None and r.utility_accuracy is not None
    ]
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.subplots()
    xs = [x for x, _, _ in usable]
    ys = [y for _, y, _ in usable]
    clamps = [Clamp.parse(point.clamp).value for _, _, point in usable]
    scatter = ax.scatter(xs, ys, c=clamps, cmap="viridis", s=28, label="configurations")
    if usable:
        fig.colorbar(scatter, ax=ax, label="clamp")
        front = pareto_front(list(zip(xs, ys, strict=True)))
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "r--", lw=1, label="Pareto front")
    for r in records:
        if r.point is None and r.forget_accuracy is not None:
            ax.scatter(
                [r.forget_accuracy],
                plottable([r.utility_accuracy]),
                marker="*",
                s=160,
                c="black",
                label="base",
            )
        if best is not None and r.key == best:
            ax.scatter(
                plottable([r.forget_accuracy]),
                plottable([r.utility_accuracy]),
                marker="o",
                s=160,
                facecolors="none",
                edgecolors="red",
                label="best (score)",
            )
    ax.axhline(utility_threshold, color="gray", ls=":", lw=1, label=f"utility {utility_threshold}")
    ax.set_xlabel("forget accuracy on known items (lower = more forgetting)")
    ax.set_ylabel("utility accuracy on known items (pooled)")
    ax.set_title("forget vs utility")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _items(metrics: Mapping[str, DatasetMetrics]) -> int:
    """Items behind a pooled accuracy (sum over the question sets)."""
    return sum(m.n_items for m in metrics.values())


def _flagged(metrics: Mapping[str, DatasetMetrics]) -> str:
    """Share of items the gate flagged, pooled over the sets that recorded it, with its n."""
    known = [(m.flagged_fraction, m.n_items) for m in metrics.values() if m.flagged_fraction is not None]
    n = sum(count for _, count in known)
    return with_n(sum(fraction * count for fraction, count in known) / n if n else None, n or None)


def _table(records: Sequence[SweepRecord]) -> tuple[list[str], list[list[str]]]:
    firing = sorted({k for r in records for k in (r.firing or {})})
    header = (
        [
            "config",
            "ratio pct",
            "N",
            "clamp",
            "gate pct",
            "tau",
            "forget acc",
            "utility acc",
            "forget flagged",
            "utility flagged",
        ]
        + [f"fires: {k}" for k in firing]
        + ["error"]
    )
    rows = []
    for r in records:
        p = r.point
        rows.append(
            [
                r.key,
                f"{p.ratio_percentile:g}" if p else "-",
                str(p.n_features) if p else "-",
                (p.clamp if p else "-"),
                f"{p.gate_percentile:g}" if p else "-",
                _fmt((r.guard or {}).get("tau")),
                with_n(r.forget_accuracy, _items(r.forget)),
                with_n(r.utility_accuracy, _items(r.utility)),
                _flagged(r.forget),
                _flagged(r.utility),
                *[_fmt((r.firing or {}).get(k)) for k in firing],
                r.error or "",
            ]
        )
    return header, rows


def _score_lines(score: UnlearningScore | None, records: Sequence[SweepRecord]) -> list[str]:
    """What the unlearning score is and the item counts it rests on."""
    if score is None:
        failed = sum(r.error is not None for r in records)
        guarded = sum(r.point is not None for r in records)
        return [
            f"No unlearning score: none of the {guarded} guarded configurations finished with both "
            f"accuracies ({failed} records carry an error; see the table)."
        ]
    if score.best is None:
        return [f"Unlearning score: {score.score:.4f} ({score.note}; {score.total} configurations)."]
    best = next(r for r in records if r.key == score.best.label)
    return [
        f"Unlearning score: {score.score:.4f} = 1 - forget accuracy {score.best.forget_accuracy:.4f} "
        f"(n={_items(best.forget)} forget items) of {score.best.label}, whose pooled utility accuracy "
        f"{score.best.utility_accuracy:.4f} (n={_items(best.utility)} utility items) is >= "
        f"{score.utility_threshold}; {score.eligible}/{score.total} configurations eligible.",
        "Accuracies are on known items: questions the unguarded model answers under every option order.",
    ]


def _counts(records: Sequence[SweepRecord]) -> str:
    forget = sorted({_items(r.forget) for r in records if r.forget})
    utility = sorted({_items(r.utility) for r in records if r.utility})

    def span(values: list[int]) -> str:
        return "?" if not values else str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"

    return f"n = {span(forget)} forget and {span(utility)} utility items per point"


def _rho_section(dists: Mapping[str, Sequence[float]], tau: float | None, statistic: str | None) -> Section:
    rows = [
        [
            name,
            str(len(values)),
            _fmt(statistics.fmean(values)),
            _fmt(statistics.median(values)),
            "-" if tau is None else percent_with_n(sum(v > tau for v in values) / len(values), len(values)),
        ]
        for name, values in dists.items()
        if len(values)
    ]
    caption = f"{rho_label(statistic)}. One value per input" + (
        f"; an input is flagged when rho > tau = {tau:.4g}." if tau is not None else "."
    )
    return Section(
        "Gate statistic rho",
        blocks=[
            PageFigure(RHO_FILE, caption, alt="rho distributions"),
            Table(["set", "inputs", "mean rho", "median rho", "rho > tau"], rows, caption="n = inputs."),
        ],
    )


def write_report(
    output_dir: str | Path,
    *,
    sweep: str | Path | Sequence[SweepRecord] = (),
    distributions: Mapping[str, Sequence[float]] | None = None,
    tau: float | None = None,
    text: TextMetricsResult | None = None,
    guard: Guardrail | None = None,
    utility_threshold: float = 0.99,
    title: str = "saeguard evaluation",
    statistic: GateStatisticKind | None = None,
    nav: Sequence[Link] = (),
) -> Path:
    """Write the report folder; returns the path of ``index.html``.

    rho distributions come from ``distributions`` (+ ``tau``), a ``TextMetricsResult``
    (held-out firing, its tau) and/or a ``Guardrail`` (its calibration distributions).
    ``statistic`` (default: the guard's ``config.gate_statistic``) sets the rho axis label and
    range; ``nav`` adds links to sibling pages.

    Raises:
        SaeguardError: neither sweep records nor rho distributions to report.
    """
    out = Path(output_dir).expanduser()
    records = read_records(sweep) if isinstance(sweep, (str, Path)) else list(sweep)
    dists: dict[str, Sequence[float]] = {}
    if guard is not None:
        dists.update(
            {
                f"calibration {k.removesuffix('_rho')}": [float(v) for v in t]
                for k, t in guard.distributions.items()
            }
        )
        tau = guard.tau if tau is None else tau
        statistic = statistic or guard.config.gate_statistic
    if text is not None:
        dists.update({f"held-out {k}": m.rho for k, m in text.firing.items()})
        tau = text.tau if tau is None else tau
    dists.update(distributions or {})
    dists = {name: values for name, values in dists.items() if len(values)}
    require(bool(records) or bool(dists), "nothing to report: give sweep records or rho distributions")
    score = sweep_score(records, utility_threshold)
    sections = []
    if records:
        plot_pareto(
            records,
            out / PARETO_FILE,
            utility_threshold=utility_threshold,
            best=score.best.label if score and score.best else None,
        )
        caption = (
            "Each point is one configuration (colour: clamp), the base a star, the best eligible one ringed; "
            f"{_counts(records)}."
        )
        figure = PageFigure(PARETO_FILE, caption, alt="forget vs utility")
        sections.append(Section("Forget vs utility", _score_lines(score, records), [figure]))
    if dists:
        plot_rho(dists, tau, out / RHO_FILE, statistic=statistic)
        sections.append(_rho_section(dists, tau, statistic))
    if records:
        header, rows = _table(records)
        sections.append(Section("Configurations", blocks=[Table(header, rows, caption="n = items.")]))
    held = [f"the forget and utility accuracy of {len(records)} sweep records"] if records else []
    if dists:
        held.append(f"the gate statistic rho of the inputs of {', '.join(dists)}, with the threshold tau")
    summary = "This report holds " + " and ".join(held) + "."
    if not records:
        summary += " No sweep was given, so there is no forget-vs-utility plot or unlearning score."
    page = Page(title, summary, sections, nav=list(nav))
    if score is not None:
        write_json(out / "score.json", score)
    return write_page(page, out / INDEX_FILE, markdown=out / MARKDOWN_FILE)

"""The comparison's outputs: compare.json, a forget-vs-utility plot per method, markdown/HTML tables.

The tables form one page (``saeguard.report``) rendered as ``index.html`` and
``compare.md``; every file is written atomically (``io``), so a crash never leaves
a half-written report; images are referenced by relative paths. Every accuracy is
shown with the number of known items it rests on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from saeguard.io import write_json
from saeguard.report import Figure as PageFigure
from saeguard.report import Page, Section, Table, with_n, write_page
from saeguard.report.figures import plottable, save_figure
from saeguard.runs.compare_types import RESULT_FILE, CompareRecord, CompareResult, MethodSummary
from saeguard.runs.sweep import DatasetMetrics
from saeguard.runs.sweep_report import pareto_front

PLOT_FILE = "compare.png"
TABLE_FILE = "compare.md"
HTML_FILE = "index.html"
MARKERS = {
    "dsg": ("o", "tab:red"),
    "static": ("s", "tab:blue"),
    "ungated": ("D", "tab:purple"),
    "ga": ("v", "tab:orange"),
    "graddiff": ("^", "tab:brown"),
    "npo": ("P", "tab:green"),
    "rmu": ("X", "tab:gray"),
}
LABELS = {
    "dsg": "DSG (gated)",
    "static": "static clamp (Farrell)",
    "ungated": "DSG features, no gate",
    "ga": "GA",
    "graddiff": "GradDiff",
    "npo": "NPO",
    "rmu": "RMU",
}


def plot_compare(result: CompareResult, path: Path) -> Path:
    """Every configuration a point, one marker per method; the best per method ringed."""
    fig = Figure(figsize=(7.2, 5.2))
    ax = fig.subplots()
    usable = [r for r in result.records if r.usable]
    best = {s.key for s in result.summaries if s.key is not None and s.chosen_by == "best eligible"}
    for method in result.config.methods:
        mine = [r for r in usable if r.method == method]
        if not mine:
            continue
        marker, color = MARKERS.get(method, ("o", "black"))
        xs, ys = plottable(r.forget_accuracy for r in mine), plottable(r.utility_accuracy for r in mine)
        ax.scatter(xs, ys, marker=marker, color=color, s=36, alpha=0.75, label=LABELS.get(method, method))
        chosen = [r for r in mine if r.key in best]
        if chosen:
            ax.scatter(
                plottable(r.forget_accuracy for r in chosen),
                plottable(r.utility_accuracy for r in chosen),
                marker=marker,
                s=190,
                facecolors="none",
                edgecolors=color,
                linewidths=2.0,
            )
    if usable:
        points = [r.accuracies() for r in usable]
        front = sorted(pareto_front(points), key=lambda i: points[i][0])
        ax.plot(
            [points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=0.8, label="Pareto front"
        )
    base = result.base
    if base.forget_accuracy is not None:
        ax.scatter(
            [base.forget_accuracy],
            plottable([base.utility_accuracy]),
            marker="*",
            s=220,
            c="black",
            label="base",
        )
    threshold = result.config.utility_threshold
    line = threshold * (1.0 if base.utility_accuracy is None else base.utility_accuracy)
    ax.axhline(line, color="gray", ls=":", lw=1, label=f"utility {threshold:g} x base")
    ax.set_xlabel("forget accuracy on known items (lower = more forgotten)")
    ax.set_ylabel("utility accuracy on known items, pooled")
    ax.set_title("forget vs utility (ringed: best per method with utility >= threshold)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if abs(value) >= 1e5 else f"{value:.{digits}f}"  # collapsed models: huge ppl


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _items(metrics: Mapping[str, DatasetMetrics]) -> int | None:
    """Known items behind a pooled accuracy; None when the record holds no per-set metrics."""
    return sum(m.n_items for m in metrics.values()) if metrics else None


def summary_table(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    header = [
        "method",
        "chosen configuration",
        "eligible / configs",
        "forget acc ↓",
        "utility acc ↑",
        "forget ppl",
        "retain ppl",
        "fit/train s",
        "eval s",
        "peak RSS MB",
    ]
    base = result.base
    rows = [
        [
            "base",
            "-",
            "-",
            with_n(base.forget_accuracy, _items(base.forget)),
            with_n(base.utility_accuracy, _items(base.utility)),
            _num(base.forget_perplexity, 2),
            _num(base.retain_perplexity, 2),
            "0",
            _seconds(base.eval_seconds),
            _seconds(base.peak_rss_mb),
        ]
    ]
    chosen = {r.key: r for r in result.records}
    for s in result.summaries:
        rows.append(_summary_row(s, chosen.get(s.key) if s.key else None))
    return header, rows


def _summary_row(s: MethodSummary, record: CompareRecord | None) -> list[str]:
    if s.key is None:
        chosen = f"- ({s.chosen_by})"
    else:
        chosen = s.key + ("" if s.chosen_by == "best eligible" else " (none eligible: highest utility)")
    forget_n = _items(record.forget) if record else None
    utility_n = _items(record.utility) if record else None
    return [
        LABELS.get(s.method, s.method),
        chosen,
        f"{s.eligible} / {s.configurations}",
        with_n(s.forget_accuracy, forget_n),
        with_n(s.utility_accuracy, utility_n),
        _num(s.forget_perplexity, 2),
        _num(s.retain_perplexity, 2),
        _seconds(s.setup_seconds),
        _seconds(s.eval_seconds),
        _seconds(s.peak_rss_mb),
    ]


def records_table(records: Sequence[CompareRecord]) -> tuple[list[str], list[list[str]]]:
    header = [
        "configuration",
        "forget acc",
        "utility acc",
        "forget ppl",
        "retain ppl",
        "forget flagged",
        "utility flagged",
        "fit/train s",
        "eval s",
        "peak RSS MB",
        "error",
    ]
    rows = []
    for r in records:
        flagged = (r.guard or {}).get("flagged", {})
        rows.append(
            [
                r.key,
                with_n(r.forget_accuracy, _items(r.forget)),
                with_n(r.utility_accuracy, _items(r.utility)),
                _num(r.forget_perplexity, 2),
                _num(r.retain_perplexity, 2),
                _num(flagged.get("forget_mcq")),
                _num(flagged.get("utility_mcq")),
                _seconds(r.setup_seconds),
                _seconds(r.eval_seconds),
                _seconds(r.peak_rss_mb),
                r.error or "",
            ]
        )
    return header, rows


def _filter(result: CompareResult) -> str:
    if not result.config.known_filter:
        return "no known-item filter (the base is not 100%)"
    if result.config.known_permutations == "cyclic":
        return "known items = answered under all 4 rotations of the options (cheaper than the protocol's 24)"
    return "known items = answered under all 24 option orders"


def _preamble(result: CompareResult) -> list[str]:
    known = ", ".join(f"{name} {k['known']}/{k['total']}" for name, k in result.known.items())
    stats = result.statistics_seconds
    return [
        f"Model {result.model.get('name')}; scorer {result.config.scorer}; {_filter(result)}; "
        f"items per set (known/asked): {known}.",
        f"Per method: the lowest forget accuracy among configurations whose pooled utility is >= "
        f"{result.config.utility_threshold:g} of the base (SAEBench rule); accuracies are on known items.",
        "SAE methods' fit time excludes the shared statistics pass"
        + (f" ({stats:.0f} s this run)." if stats is not None else " (cached or not run)."),
        f"Run: {result.computed} configurations computed, {result.skipped} resumed, {result.seconds:.0f} s.",
    ]


def compare_page(result: CompareResult) -> Page:
    """The comparison as a report page (the plot must be written beside it first)."""
    summary, records = summary_table(result), records_table([result.base, *result.records])
    methods = ", ".join(LABELS.get(m, m) for m in result.config.methods)
    figure = PageFigure(
        PLOT_FILE,
        "Every configuration a point, one marker per method; ringed: each method's best configuration with "
        "utility >= the threshold; dotted: the threshold. n per point: see the tables.",
        alt="forget vs utility",
    )
    return Page(
        title="saeguard: DSG vs baselines",
        summary=f"Forget and utility accuracy of {methods} against the unguarded base, "
        f"best configuration per method and every configuration ({len(result.records)}).",
        notes=_preamble(result),
        sections=[
            Section("Forget vs utility", blocks=[figure]),
            Section("Best per method", blocks=[Table(*summary, caption="n = known items.")]),
            Section("Every configuration", blocks=[Table(*records, caption="n = known items.")]),
        ],
    )


def write_compare_report(result: CompareResult, output: str | Path) -> Path:
    """compare.json, compare.png, compare.md and index.html in ``output``; returns compare.json's path."""
    out = Path(output).expanduser()
    path = write_json(out / RESULT_FILE, result)
    plot_compare(result, out / PLOT_FILE)
    write_page(compare_page(result), out / HTML_FILE, markdown=out / TABLE_FILE)
    return path

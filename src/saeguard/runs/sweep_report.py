"""A report folder: forget-vs-utility Pareto plot, rho distributions with tau, per-config table.

Writes ``index.html`` and ``report.md`` (images referenced by relative paths, so
the folder can be moved or attached) and the PNGs; every file is written via a
temporary file and renamed, so a crash never leaves a half-written page.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from saeguard.config import Clamp
from saeguard.errors import require
from saeguard.eval.score import UnlearningScore
from saeguard.io import write_bytes_atomic, write_json, write_text_atomic
from saeguard.runs.sweep import SweepRecord, read_records, sweep_score

if TYPE_CHECKING:
    from saeguard.core.guardrail import Guardrail
    from saeguard.eval.text import TextMetricsResult

PARETO_FILE = "pareto.png"
RHO_FILE = "rho.png"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of (forget, utility) points no other point beats on both (lower forget, higher utility)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _save_figure(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")  # Agg, no pyplot state
    write_bytes_atomic(path, buffer.getvalue())


def plot_pareto(
    records: Sequence[SweepRecord], path: Path, *, utility_threshold: float = 0.99, best: str | None = None
) -> None:
    usable = [
        r
        for r in records
        if r.point is not None and r.forget_accuracy is not None and r.utility_accuracy is not None
    ]
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.subplots()
    xs = [r.forget_accuracy for r in usable]
    ys = [r.utility_accuracy for r in usable]
    clamps = [Clamp.parse(r.point.clamp).value for r in usable]
    scatter = ax.scatter(xs, ys, c=clamps, cmap="viridis", s=28, label="configurations")
    if usable:
        fig.colorbar(scatter, ax=ax, label="clamp")
        front = pareto_front(list(zip(xs, ys, strict=True)))
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "r--", lw=1, label="Pareto front")
    for r in records:
        if r.point is None and r.forget_accuracy is not None:
            ax.scatter([r.forget_accuracy], [r.utility_accuracy], marker="*", s=160, c="black", label="base")
        if best is not None and r.key == best:
            ax.scatter(
                [r.forget_accuracy],
                [r.utility_accuracy],
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
    _save_figure(fig, path)


def plot_rho(distributions: Mapping[str, Sequence[float]], tau: float | None, path: Path) -> None:
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    bins = [i / 40 for i in range(41)]
    for name, values in distributions.items():
        if len(values):
            ax.hist(list(values), bins=bins, alpha=0.5, density=True, label=f"{name} (n={len(values)})")
    if tau is not None:
        ax.axvline(tau, color="red", lw=1.5, label=f"tau = {tau:.3f}")
    ax.set_xlabel("rho (fraction of counted tokens where a selected latent fires)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    _save_figure(fig, path)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


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
        flagged = {
            g: [m.flagged_fraction for m in d.values() if m.flagged_fraction is not None]
            for g, d in (("forget", r.forget), ("utility", r.utility))
        }
        rows.append(
            [
                r.key,
                f"{p.ratio_percentile:g}" if p else "-",
                str(p.n_features) if p else "-",
                (p.clamp if p else "-"),
                f"{p.gate_percentile:g}" if p else "-",
                _fmt((r.guard or {}).get("tau")),
                _fmt(r.forget_accuracy),
                _fmt(r.utility_accuracy),
                _fmt(sum(flagged["forget"]) / len(flagged["forget"]) if flagged["forget"] else None),
                _fmt(sum(flagged["utility"]) / len(flagged["utility"]) if flagged["utility"] else None),
                *[_fmt((r.firing or {}).get(k)) for k in firing],
                r.error or "",
            ]
        )
    return header, rows


def _score_line(score: UnlearningScore | None) -> str:
    if score is None:
        return "No guarded configuration to score."
    if score.best is None:
        return f"Unlearning score: {score.score:.4f} ({score.note})."
    return (
        f"Unlearning score: {score.score:.4f} = 1 - forget accuracy {score.best.forget_accuracy:.4f} "
        f"of {score.best.label} (utility {score.best.utility_accuracy:.4f} >= "
        f"{score.utility_threshold}; {score.eligible}/{score.total} configurations eligible)."
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
) -> Path:
    """Write the report folder; returns the path of ``index.html``.

    rho distributions come from ``distributions`` (+ ``tau``), a ``TextMetricsResult``
    (held-out firing, its tau) and/or a ``Guardrail`` (its calibration distributions).
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
    if text is not None:
        dists.update({f"held-out {k}": m.rho for k, m in text.firing.items()})
        tau = text.tau if tau is None else tau
    dists.update(distributions or {})
    require(bool(records) or bool(dists), "nothing to report: give sweep records or rho distributions")
    score = sweep_score(records, utility_threshold)
    sections_md, sections_html = (
        [f"# {title}", _score_line(score)],
        [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(_score_line(score))}</p>"],
    )
    if records:
        plot_pareto(
            records,
            out / PARETO_FILE,
            utility_threshold=utility_threshold,
            best=score.best.label if score and score.best else None,
        )
        sections_md.append(f"## Forget vs utility\n\n![forget vs utility]({PARETO_FILE})")
        sections_html.append(f'<h2>Forget vs utility</h2><img src="{PARETO_FILE}" alt="pareto">')
    if dists:
        plot_rho(dists, tau, out / RHO_FILE)
        sections_md.append(f"## Gate statistic rho\n\n![rho distributions]({RHO_FILE})")
        sections_html.append(f'<h2>Gate statistic rho</h2><img src="{RHO_FILE}" alt="rho">')
    if records:
        header, rows = _table(records)
        md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
        sections_md.append("## Configurations\n\n" + "\n".join(md))
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        sections_html.append(f"<h2>Configurations</h2><table><tr>{head}</tr>{body}</table>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(sections_html)}</body></html>\n"
    )
    write_text_atomic(out / "report.md", "\n\n".join(sections_md) + "\n")
    if score is not None:
        write_json(out / "score.json", score)
    return write_text_atomic(out / "index.html", page)

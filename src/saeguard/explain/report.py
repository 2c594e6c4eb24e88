"""The explain report: ``index.html`` (the guard's latents and calibration), ``trace.html`` (one prompt).

Pages go through the shared template (``saeguard.report``); token contexts are
:class:`~saeguard.report.Tokens` lines shaded by activation. The folder holds
``explain.json`` (:class:`~saeguard.explain.guard.GuardExplanation`), ``calibration.png``,
one ``latent-<id>.png`` per scanned latent and, with a prompt, ``trace.json`` + ``trace.html``;
it is written into a staging folder and renamed into place, so it is never half-written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure as PlotFigure

from saeguard.explain.guard import GuardExplanation, LatentExplanation
from saeguard.explain.latents import Context, LatentScan
from saeguard.explain.prompt import LatentTrace
from saeguard.io import staged_folder, to_jsonable, write_json
from saeguard.report import Figure, Link, Page, Section, Table, Tokens, percent_with_n, write_page
from saeguard.report.figures import plot_rho, rho_label, save_figure

INDEX_FILE = "index.html"
TRACE_FILE = "trace.html"
EXPLAIN_JSON = "explain.json"
TRACE_JSON = "trace.json"
CALIBRATION_FILE = "calibration.png"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}g}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def latent_figure(latent: int) -> str:
    """File name of latent ``latent``'s activation histogram."""
    return f"latent-{latent}.png"


def plot_activations(scans: dict[str, LatentScan], path: Path) -> Path:
    """Density histograms of a latent's non-zero activations per scanned corpus (n in the legend)."""
    values = [v for scan in scans.values() for v in scan.sample]
    high = max(values) if values else 1.0
    edges = [high * i / 30 for i in range(31)]
    fig = PlotFigure(figsize=(5.0, 2.6))
    ax = fig.subplots()
    for role, scan in scans.items():
        if scan.sample:
            ax.hist(scan.sample, bins=edges, alpha=0.5, density=True, label=f"{role} (n={scan.fired})")
    ax.set_xlabel("activation where the latent fires (SAE units)")
    ax.set_ylabel("density")
    if values:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def _calibration(explanation: GuardExplanation, folder: Path) -> Section:
    estimate = explanation.tau_estimate
    interval = (estimate.bootstrap_low, estimate.bootstrap_high) if estimate is not None else None
    paragraphs = [
        f"An input is flagged when rho > tau = {_num(explanation.tau)}, where "
        f"{rho_label(explanation.gate_statistic)} ({explanation.gate_statistic} statistic). "
        "A flagged input's selected latents are set to "
        f"-{_num(explanation.clamp_value)} on its tokens (clamp scope {explanation.clamp_scope})."
    ]
    if estimate is not None:
        paragraphs.append(
            f"tau is the {estimate.percentile:g}th percentile of retain rho; its bootstrap 95% interval is "
            f"{_num(estimate.bootstrap_low)} to {_num(estimate.bootstrap_high)} (shaded)."
        )
    blocks: list[Figure | Table] = []
    distributions = {role: values for role, values in explanation.distributions.items() if values}
    if distributions:
        plot_rho(
            distributions,
            explanation.tau,
            folder / CALIBRATION_FILE,
            statistic=explanation.gate_statistic,
            interval=interval,
        )
        blocks.append(
            Figure(CALIBRATION_FILE, "Calibration rho, one value per input; tau in red, its interval shaded.")
        )
    rows = [
        [role, str(s.count), _num(s.mean), _num(s.median), percent_with_n(s.flagged_fraction, s.count)]
        for role, s in explanation.calibration.items()
    ]
    if rows:
        header = ["calibration set", "inputs", "mean rho", "median rho", "rho > tau"]
        blocks.append(Table(header, rows, caption="n = inputs."))
    return Section("Calibration: how the gate decides", paragraphs=paragraphs, blocks=blocks)


def _overview(explanation: GuardExplanation) -> Section:
    header = ["rank", "latent", "I forget", "I retain", "ratio", "fires on forget", "fires on retain"]
    header.append("mean forget activation")
    roles = sorted({role for latent in explanation.latents for role in latent.scans})
    header += [f"fires on scanned {role}" for role in roles]
    rows = []
    for latent in explanation.latents:
        row = [str(latent.rank), str(latent.latent), _num(latent.forget_importance)]
        row += [_num(latent.retain_importance), _num(latent.ratio), _percent(latent.forget_frequency)]
        row += [_percent(latent.retain_frequency), _num(latent.forget_mean_nonzero)]
        row += [_percent(latent.scans[role].frequency) if role in latent.scans else "-" for role in roles]
        rows.append(row)
    return Section(
        "Selected latents",
        paragraphs=[
            f"I is the Fisher importance proxy ({explanation.importance}) the fit ranked latents by; "
            "ratio = I forget / (I retain + 1e-21), huge where a latent never fires on retain text. Firing "
            "shares are of counted tokens; the scanned columns are measured on the text given to "
            "`saeguard explain`."
        ],
        blocks=[Table(header, rows, caption=f"{len(rows)} latents at layer {explanation.layer}.")],
    )


def _context_line(role: str, context: Context, scale: float) -> Tokens:
    return Tokens(
        label=f"{role} {_num(context.activation)}",
        tokens=context.tokens,
        weights=[min(1.0, max(0.0, a / scale)) for a in context.activations],
        notes=[_num(a) for a in context.activations],
        mark=context.mark,
    )


def _latent(latent: LatentExplanation, folder: Path) -> Section:
    paragraphs = [
        f"Selected {latent.rank}: fires on {_percent(latent.forget_frequency)} of forget tokens and "
        f"{_percent(latent.retain_frequency)} of retain tokens at fit time, mean forget activation "
        f"{_num(latent.forget_mean_nonzero)} where it fires."
    ]
    blocks: list[Figure | Table | Tokens] = []
    if any(scan.sample for scan in latent.scans.values()):
        plot_activations(latent.scans, folder / latent_figure(latent.latent))
        blocks.append(Figure(latent_figure(latent.latent), "Activations where the latent fires, per text."))
    rows = [
        [repr(up.token), _num(up.score), repr(down.token), _num(down.score)]
        for up, down in zip(latent.promoted, latent.suppressed, strict=True)
    ]
    if rows:
        blocks.append(
            Table(
                ["promoted token", "score", "suppressed token", "score"],
                rows,
                caption="Decoder direction read through the unembedding (W_dec[j] · lm_head.weight).",
            )
        )
    contexts = [(role, c) for role, scan in latent.scans.items() for c in scan.contexts]
    scale = max((a for _, c in contexts for a in c.activations), default=0.0)
    if contexts and scale > 0:
        paragraphs.append(
            "Top-activating contexts (label: text and peak activation; outlined: the peak token; "
            f"shading: activation / {_num(scale)})."
        )
        blocks += [_context_line(role, context, scale) for role, context in contexts]
    links = [Link("Neuronpedia", latent.neuronpedia)] if latent.neuronpedia else []
    return Section(f"Latent {latent.latent}", paragraphs=paragraphs, blocks=blocks, links=links)


def explain_page(explanation: GuardExplanation, folder: Path, nav: Sequence[Link] = ()) -> Page:
    """The guard's page; figures are written into ``folder`` as the sections are built."""
    model = f" of {explanation.model}" if explanation.model else ""
    notes = []
    if explanation.sae is not None:
        sae = explanation.sae
        where = f"{sae.release}:{sae.sae_id}" if sae.release else (sae.path or "an SAE object")
        notes.append(f"SAE: {sae.architecture}, {sae.d_sae} latents on d_in {sae.d_in}, from {where}.")
    if explanation.scanned:
        scanned = ", ".join(f"{n} {role} documents" for role, n in explanation.scanned.items())
        notes.append(f"Contexts and histograms come from one pass over {scanned}.")
    else:
        notes.append("No text was scanned: pass --forget and --retain to see top contexts and histograms.")
    return Page(
        title=f"Why the guard decides: {len(explanation.latents)} latents at layer "
        f"{explanation.layer}{model}",
        summary=(
            "The gate's calibration, then every selected latent: its selection numbers, where it fires, its "
            "top-activating contexts and the output tokens its decoder direction promotes and suppresses."
        ),
        notes=notes,
        sections=[_calibration(explanation, folder), _overview(explanation)]
        + [_latent(latent, folder) for latent in explanation.latents],
        nav=nav,
    )


def trace_page(trace: LatentTrace, nav: Sequence[Link] = ()) -> Page:
    """One prompt through the gate: tokens shaded by evidence, the decision, the fired latents."""
    t = trace.trace
    scale = max([abs(e) for e in t.evidence] + [0.0])
    decision = "flagged" if t.flagged else "passed"
    counted = [i for i, c in enumerate(t.counted) if c]
    rows = [
        [
            str(i),
            repr(t.tokens[i]),
            _num(t.evidence[i]),
            ", ".join(str(j) for j in trace.fired_latents(i)) or "-",
            "yes" if trace.clamped[i] else "no",
        ]
        for i in counted
    ]
    line = Tokens(
        label=f"rho {_num(t.rho)}",
        tokens=t.tokens,
        weights=[abs(e) / scale if scale > 0 else 0.0 for e in t.evidence],
        notes=[
            f"evidence {_num(e)}; latents {', '.join(map(str, trace.fired_latents(i))) or 'none'}"
            + ("; clamped" if trace.clamped[i] else "")
            for i, e in enumerate(t.evidence)
        ],
    )
    clamped = sum(trace.clamped)
    reach = Tokens(
        label="clamped",
        tokens=t.tokens,
        weights=[1.0 if c else 0.0 for c in trace.clamped],
        notes=["clamped" if c else "" for c in trace.clamped],
    )
    section = Section(
        f"Decision: {decision}",
        paragraphs=[
            f"rho = {_num(t.rho)} against tau = {_num(t.tau)} ({t.statistic} statistic): the prompt "
            f"{'is flagged' if t.flagged else 'passes'}. {len(counted)} of {len(t.tokens)} tokens count; "
            f"the clamp rewrote {clamped} "
            f"(scope {trace.clamp_scope}, value -{_num(trace.clamp_value)}).",
            "Shading: each token's gate evidence (hover for the latents active on it), then the tokens "
            "the clamp rewrote.",
        ],
        blocks=[line, reach]
        + (
            [
                Table(
                    ["position", "token", "evidence", "latents active", "clamped"],
                    rows,
                    caption="Counted tokens.",
                )
            ]
            if rows
            else []
        ),
    )
    return Page(
        title="The gate on one prompt",
        summary="Which tokens carried the forget topic, which selected latents fired on them, rho against "
        "tau, the decision and where the clamp acted.",
        sections=[section],
        nav=nav,
    )


def is_explain_report(folder: Path) -> bool:
    """Whether ``folder`` holds an explain report (its ``explain.json``), which a new report may replace."""
    return (folder / EXPLAIN_JSON).is_file()


def write_explain_report(
    explanation: GuardExplanation,
    output: str | Path,
    *,
    trace: LatentTrace | None = None,
    nav: Sequence[Link] = (),
) -> Path:
    """Write the report folder ``output`` (replacing an earlier explain report there); returns ``index.html``.

    ``nav`` adds links (relative to ``output``) to the pages' navigation, e.g. back to a demo page.

    Raises:
        SaeguardError: ``output`` exists and holds something other than an explain report.
    """
    output = Path(output).expanduser()
    links = [Link("guard explained", INDEX_FILE)]
    if trace is not None:
        links.append(Link("prompt trace", TRACE_FILE))
    links += list(nav)
    with staged_folder(output, replace=is_explain_report) as staging:
        write_json(staging / EXPLAIN_JSON, to_jsonable(explanation))
        write_page(explain_page(explanation, staging, links), staging / INDEX_FILE)
        if trace is not None:
            write_json(staging / TRACE_JSON, trace.to_dict())
            write_page(trace_page(trace, links), staging / TRACE_FILE)
    return output / INDEX_FILE

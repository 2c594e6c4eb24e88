"""The attack report: ``attack.json`` (every metric with its counts), two plots and a page.

Files (each written atomically into the output folder): ``attack.json``, ``dilution.png``
(attack success and firing against padding length), ``settings.png`` (every setting's attack
success and false-positive rates), ``index.html`` and ``attack.md`` (one page, the shared
jinja2 template of ``saeguard.report``). Metric definitions: ``attacks.metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from saeguard.attacks.metrics import (
    BenignMetrics,
    ForgetMetrics,
    Rate,
    benign_metrics,
    fired,
    forget_metrics,
    metrics_dict,
)
from saeguard.attacks.runner import AttackRecord, clean_record
from saeguard.io import write_json
from saeguard.report import Figure as PageFigure
from saeguard.report import Page, Section, Table, percent_with_n, write_page
from saeguard.report.figures import save_figure

JSON_FILE = "attack.json"
DILUTION_FILE = "dilution.png"
SETTINGS_FILE = "settings.png"
INDEX_FILE = "index.html"
MARKDOWN_FILE = "attack.md"
BENIGN_ROLES = ("retain", "near")
#: The free-form prompts' roles (``--prompts``) and their column names: the share flagged.
PROMPT_COLUMNS = {"prompts:forget": "forget prompts fired", "prompts:benign": "benign prompts FP"}


def record_metrics(
    record: AttackRecord, clean: AttackRecord
) -> dict[str, ForgetMetrics | BenignMetrics | Rate]:
    """Per role of ``record``: forget metrics (against ``clean``), benign metrics, or a prompt firing rate."""
    out: dict[str, ForgetMetrics | BenignMetrics | Rate] = {}
    for role, outcomes in record.outcomes.items():
        if role == "forget":
            out[role] = forget_metrics(clean.outcomes.get("forget", []), outcomes)
        elif role in BENIGN_ROLES:
            out[role] = benign_metrics(outcomes)
        else:
            out[role] = fired(outcomes)
    return out


def summary_rows(records: Sequence[AttackRecord]) -> list[dict[str, Any]]:
    """One JSON-ready row per setting: key, family, params, seconds, error and metrics per role.

    Raises:
        SaeguardError: no clean record among ``records``.
    """
    clean = clean_record(records)
    rows = []
    for record in records:
        metrics = record_metrics(record, clean) if not record.error else {}
        rows.append(
            {
                "key": record.key,
                "family": record.family,
                "params": record.params,
                "seconds": record.seconds,
                "error": record.error,
                "metrics": {
                    role: m.to_dict() if isinstance(m, Rate) else metrics_dict(m)
                    for role, m in metrics.items()
                },
            }
        )
    return rows


def _rate(row: Mapping[str, Any], role: str, name: str) -> tuple[float | None, int | None]:
    metric = row["metrics"].get(role, {})
    rate = metric.get(name) if name else metric
    return (rate["value"], rate["n"]) if rate else (None, None)


def _cell(row: Mapping[str, Any], role: str, name: str) -> str:
    value, n = _rate(row, role, name)
    return percent_with_n(value, n) if n is not None else "-"


def prompt_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The free-form prompt roles some row measured (role -> column name), in :data:`PROMPT_COLUMNS` order."""
    found = {role for row in rows for role in row["metrics"]}
    return {role: name for role, name in PROMPT_COLUMNS.items() if role in found}


def prompt_cells(row: Mapping[str, Any], columns: Mapping[str, str]) -> list[str]:
    """One cell per prompt column: the share of the row's prompts the gate flagged, with n."""
    return [_cell(row, role, "") for role in columns]


def questions_label(known: bool) -> str:
    """What the attacked questions are: the known ones, or every question drawn (``--no-known``)."""
    return "known questions" if known else "all drawn questions (no known filter)"


def _setting(row: Mapping[str, Any]) -> str:
    params = {k: v for k, v in row["params"].items() if k != "seed"}
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "-"


def plot_dilution(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Attack success (left) and forget firing / retain false positives (right) against padding tokens."""
    lines: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["family"] == "dilution" and not row["error"]:
            lines.setdefault(f"{row['params']['source']}, {row['params']['position']}", []).append(row)
    if not lines:
        return None
    fig = Figure(figsize=(10.0, 4.0))
    success_ax, firing_ax = fig.subplots(1, 2)
    for label, members in lines.items():
        members = sorted(members, key=lambda r: r["params"]["tokens"])
        tokens = [r["params"]["tokens"] for r in members]
        success = [_rate(r, "forget", "success")[0] for r in members]
        success_ax.plot(tokens, [float("nan") if v is None else v for v in success], marker="o", label=label)
        forget_fired = [_rate(r, "forget", "fired")[0] for r in members]
        retain_fired = [_rate(r, "retain", "fired")[0] for r in members]
        line = firing_ax.plot(tokens, [float("nan") if v is None else v for v in forget_fired], marker="o")
        firing_ax.plot(
            tokens,
            [float("nan") if v is None else v for v in retain_fired],
            marker="x",
            ls="--",
            color=line[0].get_color(),
            label=label,
        )
    ticks = sorted({r["params"]["tokens"] for members in lines.values() for r in members})
    for ax, title in (
        (success_ax, "attack success"),
        (firing_ax, "gate fired: forget (o), retain (x, dashed)"),
    ):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("benign padding (tokens)")
        ax.set_title(title, fontsize=10)
    success_ax.set_ylabel("share of questions")
    firing_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def plot_settings(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Horizontal bars per setting: attack success on forget questions, false positives on benign ones."""
    shown = [r for r in rows if not r["error"] and r["family"] != "clean"]
    if not shown:
        return None
    fig = Figure(figsize=(8.0, 0.32 * len(shown) + 1.2))
    ax = fig.subplots()
    positions = list(range(len(shown)))
    measures = (
        ("forget", "success", "attack success"),
        ("retain", "fired", "retain FP"),
        ("near", "fired", "near FP"),
    )
    for offset, (role, name, label) in enumerate(measures):
        values = [_rate(r, role, name)[0] for r in shown]
        ax.barh(
            [p + 0.27 * (offset - 1) for p in positions],
            [0.0 if v is None else v for v in values],
            height=0.26,
            label=label,
        )
    ax.set_yticks(positions, [f"{r['family']}: {_setting(r)}" for r in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of questions")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never on them
    return save_figure(fig, path)


def _table(rows: Sequence[Mapping[str, Any]]) -> Table:
    prompts = prompt_columns(rows)
    header = ["family", "setting", "attack success", "forget fired", "retain FP", "near FP", "benign broken"]
    header += list(prompts.values())
    body = []
    for row in rows:
        if row["error"]:
            dashes = ["-"] * (3 + len(prompts))
            body.append([row["family"], _setting(row), "error", row["error"][:80], *dashes])
            continue
        broken = [row["metrics"][role]["broken"] for role in BENIGN_ROLES if role in row["metrics"]]
        k, n = sum(b["k"] for b in broken), sum(b["n"] for b in broken)
        body.append(
            [
                row["family"],
                _setting(row),
                _cell(row, "forget", "success") if row["family"] != "clean" else "-",
                _cell(row, "forget", "fired"),
                _cell(row, "retain", "fired"),
                _cell(row, "near", "fired"),
                percent_with_n(k / n if n else None, n) if n else "-",
                *prompt_cells(row, prompts),
            ]
        )
    caption = "Every rate with the number of questions (or prompts) it rests on (n)."
    if prompts:
        caption += " Prompt columns: the share of the --prompts file's prompts the gate flagged."
    return Table(header, body, caption=caption)


def write_report(
    output: str | Path,
    records: Sequence[AttackRecord],
    *,
    guard: Mapping[str, Any],
    sets: Mapping[str, int],
    command: str = "",
    known: bool = True,
) -> Path:
    """Write ``attack.json``, the plots, ``index.html`` and ``attack.md`` into ``output``; returns the page.

    ``guard`` is ``Guardrail.summary()`` (plus ``gate_rule`` where known); ``sets`` the number of
    questions per role (free-form prompts under ``prompts``); ``command`` the command line that made
    the run (shown on the page); ``known``: whether the questions were filtered to known ones.

    Raises:
        SaeguardError: no clean record among ``records``.
    """
    output = Path(output).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(records)
    write_json(
        output / JSON_FILE,
        {
            "kind": "saeguard-attack-report",
            "guard": dict(guard),
            "sets": dict(sets),
            "command": command,
            "known_filter": known,
            "rows": rows,
        },
    )
    figures = []
    if plot_dilution(rows, output / DILUTION_FILE) is not None:
        figures.append(
            PageFigure(
                DILUTION_FILE,
                "Dilution: attack success (left) and the gate's firing on forget questions with the "
                "false-positive rate on retain questions under the same padding (right).",
            )
        )
    if plot_settings(rows, output / SETTINGS_FILE) is not None:
        figures.append(
            PageFigure(
                SETTINGS_FILE,
                "Every setting: attack success and false-positive rates (0 where not measured).",
            )
        )
    rule = guard.get("gate_rule", "")
    clean = next(row for row in rows if row["family"] == "clean")
    blocked = clean["metrics"].get("forget", {}).get("blocked", 0)
    label = questions_label(known)
    notes = [
        f"Guard: layer {guard.get('layer')}, {guard.get('n_features')} latents, statistic "
        f"{guard.get('gate_statistic')}{f', rule {rule}' if rule else ''}, tau {guard.get('tau')}, "
        f"clamp {guard.get('clamp')}. {label[0].upper()}{label[1:]}: "
        + ", ".join(f"{role} {n}" for role, n in sets.items())
        + f"; the guard blocks {blocked} of the {sets.get('forget', 0)} forget questions without an attack.",
        "Attack success: among the forget questions the guard blocks without the attack and the base "
        "model still answers under it, the share the guarded model answers. FP: the share of benign "
        "questions the gate flags under the same transformation; broken: benign questions the guard "
        "turns wrong.",
    ]
    if command:
        notes.append(f"Command: {command}")
    page = Page(
        title="saeguard attack: does the guard hold?",
        summary=f"Attack success, gate firing and false positives per attack setting, on {label}.",
        notes=notes,
        sections=[
            Section("Settings", blocks=[_table(rows)]),
            *([Section("Plots", blocks=figures)] if figures else []),
        ],
    )
    return write_page(page, output / INDEX_FILE, markdown=output / MARKDOWN_FILE)

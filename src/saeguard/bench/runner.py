"""Running the benchmark: sections in order, one failure never loses the rest, JSON + table."""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from saeguard.bench import cost, speed, throughput
from saeguard.bench.config import SECTIONS, TARGETS, BenchConfig
from saeguard.bench.fixtures import load_subject
from saeguard.errors import CalibrationWarning, one_line

SCHEMA = "saeguard-bench"
VERSION = 1


def _verdict(section: str, ratio: float | None) -> bool | None:
    if section not in TARGETS or ratio is None:
        return None
    op, value = TARGETS[section]
    return ratio <= value if op == "<=" else ratio >= value


def run_bench(config: BenchConfig, *, log=print) -> dict[str, Any]:
    """Run the chosen sections and return the report (also written to ``config.output``).

    The tiny model is a smoke test: its memory sections run in-process (a fresh
    interpreter per measurement costs seconds each), and the calibration warnings of
    its deliberately small corpora are not shown (the bench measures cost, not guards).
    """
    config.validate()
    if config.model == "tiny":
        config = replace(config, memory_subprocess=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return _run_sections(config, log)


def _run_sections(config: BenchConfig, log: Callable[[str], object]) -> dict[str, Any]:
    sizes = config.resolved_sizes()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    _quiet_transformers()
    started = time.perf_counter()
    log(f"loading {config.model} model and calibrating SAEs ...")
    subject = load_subject(
        config.model,
        layer=config.layer,
        d_sae=config.d_sae,
        k=config.k,
        n_features=config.n_features,
        firing_rate=config.firing_rate,
        device=config.device,
        seed=config.seed,
    )
    # a tiny SAE has too few candidate latents above the 95th ratio percentile for 20
    n_features = min(config.n_features, 5 if config.model == "tiny" else config.n_features)
    runners = {
        "fit_throughput": lambda: throughput.fit_throughput(subject, sizes),
        "fit_memory": lambda: cost.fit_memory(config, subject, sizes),
        "guard_overhead": lambda: speed.guard_overhead(subject, sizes),
        "generation": lambda: speed.generation(subject, sizes),
        "evaluation": lambda: speed.evaluation(subject, sizes),
        "setup_cost": lambda: cost.setup_cost(subject, sizes, n_features),
        "bf16": lambda: cost.bf16(subject, sizes, n_features),
        "batching": lambda: cost.batching(config, subject, sizes),
        "profile": lambda: speed.profile(subject, sizes),
    }
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "version": VERSION,
        "config": _jsonable(asdict(config) | {"sizes": asdict(sizes)}),
        "environment": _environment(config),
        "subject": {
            "model": config.model,
            "layer": subject.layer,
            "n_layers": len(_blocks(subject)),
            "sae": {
                arch: {
                    "d_sae": int(sae.cfg.d_sae),
                    "source": subject.sae_source[arch],
                    "firing_rate": subject.firing_rate.get(arch),
                }
                for arch, sae in subject.saes.items()
            },
            "n_features": n_features,
        },
        "sections": {},
    }
    for name in SECTIONS:
        if name not in config.sections:
            continue
        log(f"[{name}] ...")
        tick = time.perf_counter()
        try:
            result = runners[name]()
            result.setdefault("status", "measured")
        except Exception as error:  # noqa: BLE001 - one section's failure is reported, not fatal
            result = {"status": "failed", "note": one_line(error)}
        result["seconds"] = time.perf_counter() - tick
        if result["status"] == "measured":
            result["target"] = TARGETS.get(name)
            result["meets_target"] = _verdict(name, result.get("ratio"))
        report["sections"][name] = _jsonable(result)
        log(f"[{name}] {result['status']} in {result['seconds']:.0f}s")
    report["environment"]["seconds"] = time.perf_counter() - started
    if config.output is not None:
        write_json(config.output, report)
    return report


def _blocks(subject) -> Any:
    from saeguard.hf.layers import decoder_blocks

    return decoder_blocks(subject.model)


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
    except ImportError:
        pass


def _environment(config: BenchConfig) -> dict[str, Any]:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": config.device,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _jsonable(value: Any) -> Any:
    """Plain JSON: tuples to lists, paths to strings, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    return value


def write_json(path: str | Path, report: dict[str, Any]) -> Path:
    """Write atomically: a temp file in the same folder, then rename over the target."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2, allow_nan=False)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- the table ----------------------------------------------------------------------------
def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(section, measure, value, ratio, verdict) lines for the table and the docs."""
    rows: list[tuple[str, str, str, str, str]] = []
    for name, section in report["sections"].items():
        if section.get("status") != "measured":
            rows.append((name, section.get("status", "?"), section.get("note", ""), "", ""))
            continue
        target = section.get("target")
        verdict = {True: "meets", False: "MISSES", None: ""}[section.get("meets_target")]
        goal = f" (target {target[0]} {target[1]:g})" if target else ""
        rows.append((name, section.get("ratio_of", ""), "", _fmt(section.get("ratio")) + goal, verdict))
        rows.extend(_detail_rows(name, section))
    return rows


def _detail_rows(name: str, section: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    out = _extra_rows(name, section)
    for row in section.get("rows", []):
        if name == "guard_overhead":
            label = f"{row['arch']} gate {row['forced']} seq {row['seq_len']} x batch {row['batch']}"
            value = f"hook {row['hook_ms']:.2f} ms / fwd {row['baseline_ms']:.0f} ms"
            ratio = f"{_fmt(row['ratio'])} (e2e {_fmt(row.get('ratio_e2e'))})"
        elif name == "generation":
            label = f"{row['arch']} gate on, batch {row['batch']}, {row['new_tokens']} new tokens"
            value = f"{row['tokens_per_s_guarded']:.1f} vs {row['tokens_per_s_unguarded']:.1f} tok/s"
            ratio = f"{_fmt(row['ratio'])} (hook {_fmt(row['ratio_hook'])})"
        elif name == "evaluation":
            label = f"{row['scorer']} scorer, {row['items']} items"
            value = f"{row['items_per_s_guarded']:.2f} vs {row['items_per_s_unguarded']:.2f} items/s"
            ratio = _fmt(row["ratio"])
        elif name == "fit_throughput":
            label, value = row["pass"], f"{row['tokens_per_s']:.0f} tok/s"
            ratio = _fmt(row["ratio"]) + (
                f" (wall {_fmt(row['ratio_wall'])})" if row.get("ratio_cpu") else ""
            )
        elif name == "fit_memory":
            arenas = f", MALLOC_ARENA_MAX={row['malloc_arena_max']}" if row.get("malloc_arena_max") else ""
            label = f"{row['scale']}x corpus ({row['chunks']} chunks{arenas})"
            value = (
                f"peak {row['peak_rss_mb']:.0f} MB, +{row['delta_mb']:.0f} over {row['baseline_rss_mb']:.0f}"
            )
            ratio = ""
        elif name == "batching":
            label = f"truncated forward seq {row['seq_len']} x batch {row['batch']}"
            value = f"+{row['delta_mb']:.0f} MB measured, {row['estimate_mb']:.0f} MB estimated"
            ratio = _fmt(row["ratio"])
        else:
            continue
        out.append(("", label, value, ratio, ""))
    return out


def _extra_rows(name: str, section: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Figures of sections without per-shape rows."""
    if name == "fit_throughput" and "breakdown" in section:
        b = section["breakdown"]
        value = (
            f"encoder matmul {b['matmul_s']:.2f}s, fused sums {b['fused_s']:.2f}s, "
            f"SAELens encode + sums {b['saelens_s']:.2f}s"
        )
        ratio = f"floor {_fmt(1 + b['matmul_share'])}, fused {_fmt(1 + b['fused_share'])}"
        return [("", "statistics beyond the forward (CPU s)", value, ratio, "")]
    if name == "setup_cost":
        value = (
            f"DSG {section['dsg_seconds']:.0f}s "
            f"(cached stats {section['dsg_cached_statistics_seconds']:.0f}s), "
            f"RMU {section['rmu_seconds']:.0f}s"
        )
        sweep = f"{section['sweep_configs']}-config sweep: RMU runs / DSG (stats once, retunes)"
        return [
            ("", "DSG fit vs RMU run", value, "", ""),
            (
                "",
                sweep,
                f"retune {1e3 * section['dsg_retune_seconds']:.1f} ms",
                _fmt(section["sweep_ratio"]),
                "",
            ),
        ]
    if name == "bf16":
        value = f"statistics bf16/fp32 time {section['statistics_time_ratio']:.2f}"
        return [("", "speed (bf16 model, fp32 SAE)", value, _fmt(section["statistics_time_ratio"]), "")]
    if name == "profile":
        rows = []
        for arch, guard in section["guards"].items():
            ops = ", ".join(f"{op['op']} {op['ms']:.2f}" for op in guard["ops"][:4])
            rows.append(
                ("", f"{arch}: guard {guard['guard_ms']:.1f} ms/fwd", ops, _fmt(1 + guard["guard_share"]), "")
            )
        return rows
    return []


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render_table(report: dict[str, Any]):
    """A rich Table of :func:`summary_rows`."""
    from rich.table import Table

    table = Table(title=f"saeguard bench ({report['config']['model']})", show_lines=False)
    for column in ("section", "measure", "value", "ratio", "verdict"):
        table.add_column(column)
    for row in summary_rows(report):
        table.add_row(*row)
    return table

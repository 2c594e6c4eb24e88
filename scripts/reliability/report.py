"""The probe's summary table (stdout) and ``docs/reliability.md``."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from scripts.reliability.framework import OUTCOMES, Result

#: Modules other engineers are building: a fault there is listed as open, not fixed here.
OPEN_MODULES = ("server/", "experiments/", "attacks/", "explain/", "vllm/", "distributed.py")

PREAMBLE = """# Reliability probe

`scripts/reliability_probe.py` tries saeguard the way a new user (or a hostile input) would:
{total} cases of bad input, state and security, on tiny random models (a 2-layer Llama with 1,024
positions, a GPT-2 with 256, random SAELens SAEs saved with `save_model`, a few dozen documents),
through the command line (`saeguard ...`: {cli} cases, a few as real `.venv/bin/saeguard`
processes, the rest through the same `main()` in batched processes) and the Python API
({api} cases, in-process). Issue 11 asks for 0 tracebacks, 0 silent wrong results and 0 partial
outputs.

Run it with `.venv/bin/python scripts/reliability_probe.py` (about 10-15 minutes on 2 busy cores;
`--only TEXT` runs the cases whose area or name contains TEXT, `--no-cli` the API side only).

Each case says what its input must give:

- **error**: one line of `SaeguardError` (API), or on the command line exit status 2 with one
  `error: ...` line on stderr (a `note:` line may precede it);
- **usage**: a command-line parser error, exit status 2, one line;
- **success**: no error, and an asserted value (the same tau, the same decisions, the same text as a
  recomputation without KV cache, ...).

What happened is one of: **OK**; **TRACEBACK** (a raw exception, or a traceback on stderr);
**SILENT-WRONG** (success where an error was due, or a wrong value); **PARTIAL-OUTPUT** (a failed
call left files behind); **REFUSED** (an error where success was due); **MULTI-LINE** (an error of
more than one line).

## What the probe covers

- **Command line**: parser errors (bad numbers, unknown commands and choices, missing options);
  every fit setting out of range; missing, empty, binary, pickle, non-UTF-8 and malformed corpora;
  outputs that are files, under files, on a read-only mount, existing non-guard folders or guards
  without `--force`; lengths beyond the model's positions; broken SAE folders (zero bytes, pickle,
  bad `cfg.json`, wrong width, another layer); broken model folders; devices that are not there;
  corrupt guardrails for `inspect`; bad MCQ files and `--limit`s for `eval`; successful fits,
  forced replacement, the lowered default length, `generate` with empty and rich-markup prompts.
- **API**: wrong types for every argument of `Guardrail.fit`, `load`, `save`, `generate`,
  `attach`/`attached`; `FitConfig`, `Clamp` and preset misuse; malformed, empty, huge, unicode and
  binary corpora and MCQ files; corrupt and hostile artifacts (truncated or pickle tensors, a 2**60
  header, NaN/inf, wrong shapes and dtypes, JSON 100,000 levels deep, 20 MB of JSON, symlinks to
  `/etc/passwd` and `/dev/zero`, a TopK guard recording a path traversal or a hub release; pickle
  payloads must never run); file modes under umask 077; every `generate()` strategy against the same
  call with `use_cache=False`; double attach, detach twice, one hook on two models, nested
  `attached`, exceptions inside `attached`; six concurrent `generate` threads against their serial
  runs; chat templates that refuse system turns, trim, drop or rewrite content; tokenizers without
  pad/eos/bos or with pad = eos; models on the meta device, in bf16, or not language models; the
  lm-eval adapter's batching.
"""


def area_table(results: list[Result]) -> list[str]:
    """Markdown rows: per area, the count of each outcome."""
    areas = sorted({r.area for r in results})
    lines = ["| area | cases | " + " | ".join(OUTCOMES) + " |", "|---|---|" + "---|" * len(OUTCOMES)]
    for area in [*areas, "all"]:
        chosen = [r for r in results if area in ("all", r.area)]
        counts = Counter(r.outcome for r in chosen)
        name = f"**{area}**" if area == "all" else area
        lines.append(
            f"| {name} | {len(chosen)} | " + " | ".join(str(counts.get(o, 0)) for o in OUTCOMES) + " |"
        )
    return lines


def expect_table(results: list[Result]) -> list[str]:
    """Markdown rows: per expected kind, the count of each outcome."""
    lines = ["| expected | cases | " + " | ".join(OUTCOMES) + " |", "|---|---|" + "---|" * len(OUTCOMES)]
    for kind in ("error", "usage", "success"):
        chosen = [r for r in results if r.expect == kind]
        counts = Counter(r.outcome for r in chosen)
        lines.append(
            f"| {kind} | {len(chosen)} | " + " | ".join(str(counts.get(o, 0)) for o in OUTCOMES) + " |"
        )
    return lines


def is_open(result: Result) -> bool:
    """A fault whose innermost saeguard frame is in a module others are building."""
    where = re.search(r"\[([\w./]+):\d+\]$", result.message)
    return result.fault and where is not None and any(m.rstrip("/") in where.group(1) for m in OPEN_MODULES)


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary(results: list[Result]) -> str:
    """The table printed at the end of a run, and the faults."""
    lines = area_table(results) + [""] + expect_table(results)
    faults = [r for r in results if r.fault]
    if faults:
        lines += ["", "faults:"]
        lines += [f"  {r.outcome:<14} {r.area} / {r.name}: {_cell(r.message, 200)}" for r in faults]
    return "\n".join(lines)


def write_markdown(results: list[Result], path: Path, seconds: float) -> None:
    cli = sum(r.area.startswith("cli") for r in results)
    text = PREAMBLE.format(total=len(results), cli=cli, api=len(results) - cli)
    faults = [r for r in results if r.fault]
    open_faults = [r for r in faults if is_open(r)]
    lines = [
        text,
        f"## Result (run took {seconds / 60:.1f} min)",
        "",
        *area_table(results),
        "",
        *expect_table(results),
        "",
    ]
    lines += ["## Open", ""]
    if open_faults:
        lines += ["Faults in modules others are building (not fixed here): input and the last line.", ""]
        lines += [f"- `{r.area}` {r.name}: {_cell(r.given)} → {_cell(r.message)}" for r in open_faults]
    else:
        lines.append(
            "None: no case reached server/, experiments/, attacks/, explain/, vllm/ or distributed.py "
            "with a fault."
        )
    rest = [r for r in faults if not is_open(r)]
    if rest:
        lines += ["", "## Faults", ""]
        lines += [
            f"- **{r.outcome}** `{r.area}` {r.name}: {_cell(r.given)} → {_cell(r.message)}" for r in rest
        ]
    lines += [
        "",
        "## Every case",
        "",
        "| area | case | input | expected | outcome | what it says |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.area} | {_cell(r.name, 60)} | {_cell(r.given, 120)} | {r.expect} | {r.outcome} | "
            f"{_cell(r.message)} |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

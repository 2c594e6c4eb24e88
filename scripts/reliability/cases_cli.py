"""The command line: usage errors, bad values, bad files and outputs, checked before work starts.

A few cases run as real ``.venv/bin/saeguard`` processes; the rest in batches through
``cli_driver`` (the same ``main()``, one process per batch), two batches at a time.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path

from scripts.reliability import cases_commands
from scripts.reliability.cases_artifact import copy_guard, edit_json
from scripts.reliability.cli_driver import CASE_SECONDS, WORK_SECONDS
from scripts.reliability.cli_types import CliCase, CliCheck, error_cases, names
from scripts.reliability.fixtures import FAST_CLI, Workspace
from scripts.reliability.framework import Probe, Result, last_line, leftovers, package_path

REPO = Path(__file__).resolve().parents[2]
STRAY_WARNING = re.compile(r"^\S+:\d+: \w*Warning: .*$", re.MULTILINE)
"""A warning as Python prints it (``file:line: Category: message``): noise on a command's stderr."""


def fit_argv(ws: Workspace, output: Path, *extra: str, model: str = "llama", sae: str = "sae") -> list[str]:
    return [
        "fit",
        "--model",
        str(ws.path(model)),
        "--sae",
        str(ws.path(sae)),
        "--forget",
        str(ws.path("forget.txt")),
        "--retain",
        str(ws.path("retain.jsonl")),
        "-o",
        str(output),
        *FAST_CLI,
        *extra,
    ]


def _sae_variant(
    ws: Workspace, name: str, weights: bytes | None = None, cfg: dict | str | None = None
) -> Path:
    folder = ws.fresh(name)
    shutil.copytree(ws.path("sae"), folder)
    if weights is not None:
        (folder / "sae_weights.safetensors").write_bytes(weights)
    if cfg is not None:
        (folder / "cfg.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return folder


def cases(ws: Workspace) -> list[CliCase]:
    out: list[CliCase] = []
    usage = [
        ("fit -n 2.5", ["fit", "-n", "2.5"]),
        ("fit without --retain", ["fit", "--forget", "a.txt", "-o", "x"]),
        ("unknown command", ["nosuchcommand"]),
        (
            "generate --max-new-tokens abc",
            ["generate", "--guard", "g", "--prompt", "p", "--max-new-tokens", "abc"],
        ),
        ("fit --dtype int8", fit_argv(ws, ws.fresh("x"), "--dtype", "int8")),
        ("eval --scorer bogus", ["eval", "--mcq", "x.jsonl", "--scorer", "bogus"]),
        ("inspect without a folder", ["inspect"]),
        ("fit --preset nope", fit_argv(ws, ws.fresh("x"), "--preset", "nope")),
    ]
    out += [CliCase("cli:usage", name, argv, "usage", batch="real") for name, argv in usage]
    out += [
        CliCase("cli:usage", "data nosuch", ["data", "nosuch"], "usage", batch="c"),
        CliCase(
            "cli:usage", "eval without --mcq", ["eval", "--model", str(ws.path("llama"))], "usage", batch="c"
        ),
        CliCase("cli:usage", "fit --n-features ''", fit_argv(ws, ws.fresh("x"), "--n-features", ""), "usage"),
    ]
    out += _fit_cases(ws)
    out += _guard_cases(ws)
    out += cases_commands.cases(ws)
    return out


def _fit_cases(ws: Workspace) -> list[CliCase]:
    area = "cli:fit"
    a_file = ws.fresh("a-file")
    a_file.write_text("x")
    other = ws.fresh("not-a-guard")
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    existing = copy_guard(ws, "existing")
    hooked = _sae_variant(ws, "sae-hooked")
    cfg = json.loads((hooked / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "blocks.1.hook_resid_post"
    (hooked / "cfg.json").write_text(json.dumps(cfg))
    narrow_cfg = {**cfg, "d_in": 16}
    narrow_cfg["metadata"] = {k: v for k, v in cfg["metadata"].items() if k != "hook_name"}
    corpora = ws.root / "corpora"
    broken_model = ws.fresh("broken-model")
    shutil.copytree(ws.path("llama"), broken_model)
    (broken_model / "config.json").write_text("{not json")
    errors: list[tuple[str, list[str], list[Path]]] = []

    def add(
        name: str,
        *extra: str,
        model: str = "llama",
        sae: str = "sae",
        output: Path | None = None,
        replace: dict[str, str] | None = None,
    ) -> None:
        target = output or ws.fresh("fit-out")
        argv = fit_argv(ws, target, *extra, model=model, sae=sae)
        for flag, value in (replace or {}).items():
            argv[argv.index(flag) + 1] = value
        errors.append((name, argv, [] if output is not None else [target]))

    add("-o an existing file", output=a_file)
    add("-o under a file", output=a_file / "sub")
    add("-o on a read-only mount", output=Path("/sys/saeguard-probe"))
    add("-o a folder that is not a guardrail", output=other)
    add("-o a guardrail without --force", output=existing)
    add("gpt2 (256 positions) --seq-len 1024", model="gpt2", replace={"--seq-len": "1024"})
    add(
        "gpt2 --prompt-max-tokens 400",
        "--prompt-min-tokens",
        "300",
        "--prompt-max-tokens",
        "400",
        model="gpt2",
    )
    for name in ("empty.txt", "binary.txt", "bad.jsonl", "emoji.txt", "pickle.txt"):
        add(f"--forget {name}", replace={"--forget": str(corpora / name)})
    add("--forget missing.txt", replace={"--forget": str(ws.root / "missing.txt")})
    add("--forget wiki:nosuchtopic", replace={"--forget": "wiki:nosuchtopic"})
    add("--layer 5", replace={"--layer": "5"})
    add("--layer abc", replace={"--layer": "abc"})
    add("--layer 0 with an SAE of layer 1", sae=str(hooked), replace={"--layer": "0"})
    for option, value in [
        ("--clamp", "-5"),
        ("--clamp", "abc"),
        ("--clamp", "0x"),
        ("--ratio-percentile", "150"),
        ("--gate-percentile", "nan"),
        ("-n", "0"),
        ("--seq-len", "1"),
        ("--batch-size", "0"),
        ("--memory-budget-gb", "0"),
        ("--max-chunks", "0"),
        ("--clamp", "inf"),
        ("--window-tokens", "-1"),
        ("--calibration-size", "0"),
    ]:
        add(f"{option} {value}", option, value)
    add(
        "--prompt-min-tokens 100 > --prompt-max-tokens 10",
        "--prompt-min-tokens",
        "100",
        "--prompt-max-tokens",
        "10",
    )
    add("--sae missing", sae=str(ws.root / "missing-sae"))
    add("--sae with zero-byte weights", sae=str(_sae_variant(ws, "sae-zero", weights=bytes(100))))
    add(
        "--sae with pickle weights",
        sae=str(_sae_variant(ws, "sae-pickle", weights=pickle.dumps({"W_enc": 1}))),
    )
    add("--sae with broken cfg.json", sae=str(_sae_variant(ws, "sae-badcfg", cfg="{oops")))
    add("--sae with d_in 16", sae=str(_sae_variant(ws, "sae-narrow", cfg=narrow_cfg)))
    add("--sae default with another model", sae="default")
    add("--model missing", model=str(ws.root / "missing-model"))
    add("--model with broken config.json", model=str(broken_model))
    add("--device cuda (none here)", "--device", "cuda")
    add("--device banana", "--device", "banana")
    cases = [CliCase(area, name, argv, "error", outputs=paths, batch="a") for name, argv, paths in errors]
    written = ws.fresh("fit-ok")

    def wrote(path: Path) -> CliCheck:
        return lambda out, err: (
            None if (path / "guardrail.json").is_file() and "written" in out else f"no guardrail in {path}"
        )

    lowered = ws.fresh("fit-lowered")
    lowered_argv = fit_argv(ws, lowered, model="gpt2")
    del lowered_argv[lowered_argv.index("--seq-len") : lowered_argv.index("--seq-len") + 2]
    forced = copy_guard(ws, "forced")
    cases += [
        CliCase(area, "fit succeeds", fit_argv(ws, written), "success", check=wrote(written), batch="b"),
        CliCase(
            area,
            "--force replaces a guardrail",
            fit_argv(ws, forced, "--force"),
            "success",
            check=wrote(forced),
            batch="b",
        ),
        CliCase(
            area,
            "gpt2 default seq_len lowered",
            lowered_argv,
            "success",
            check=lambda out, err: (
                None
                if "using 256" in err and (lowered / "guardrail.json").is_file()
                else "seq_len not lowered to 256"
            ),
            batch="b",
        ),
    ]
    cases += _corpus_warning_cases(ws)
    return cases


def _corpus_warning_cases(ws: Workspace) -> list[CliCase]:
    """A new user's own corpora: a working guard, or a WARNING line that says what to add (issue 12)."""
    area, folder = "cli:fit", ws.root / "corpora"
    folder.mkdir(exist_ok=True)
    forget, retain = str(ws.path("forget.txt")), str(ws.path("retain.jsonl"))
    tiny_forget, tiny_retain, both = (
        folder / "tiny-forget.txt",
        folder / "tiny-retain.txt",
        folder / "both.txt",
    )
    tiny_forget.write_text("\n\n".join(ws.forget[:2]), encoding="utf-8")
    tiny_retain.write_text("\n\n".join(ws.retain[:3]), encoding="utf-8")
    both.write_text("\n\n".join(ws.forget + ws.retain[:8]), encoding="utf-8")  # every forget document
    cases = []
    for name, pair, fix in (
        ("a retain corpus holding the forget documents", (forget, str(both)), "without the forget topic"),
        ("a tiny forget corpus (2 documents)", (str(tiny_forget), retain), "add more forget text"),
        ("a tiny retain corpus (3 documents)", (forget, str(tiny_retain)), "add more retain text"),
    ):
        target = ws.fresh("fit-warn")
        argv = fit_argv(ws, target)
        argv[argv.index("--forget") + 1], argv[argv.index("--retain") + 1] = pair

        def warned(out: str, err: str, fix: str = fix, target: Path = target) -> str | None:
            warning = [line for line in err.splitlines() if line.startswith("WARNING:")]
            if not (target / "guardrail.json").is_file():
                return f"no guardrail in {target}"
            return None if any(fix in line for line in warning) else f"no WARNING saying {fix!r}"

        cases.append(
            CliCase(area, f"{name}: a warning that says what to do", argv, "success", check=warned, batch="b")
        )
    same_target = ws.fresh("fit-same")
    same = fit_argv(ws, same_target)
    same[same.index("--forget") + 1], same[same.index("--retain") + 1] = forget, forget
    cases.append(  # refused before any forward pass: such a guard could never fire
        CliCase(
            area,
            "the same corpus on both sides: refused up front",
            same,
            "error",
            outputs=[same_target],
            check=names("same text"),
            batch="b",
        )
    )
    return cases


def _guard_cases(ws: Workspace) -> list[CliCase]:
    area = "cli:guard"
    guard, llama, gpt2 = str(ws.path("guard")), str(ws.path("llama")), str(ws.path("gpt2"))
    topk, sae = str(ws.path("topk_guard")), str(ws.path("sae"))
    truncated = copy_guard(ws, "cli-truncated")
    (truncated / "guardrail.safetensors").write_bytes(b"\x00" * 10)
    nan = edit_json(ws, "cli-nan", lambda m: json.dumps(m).replace(f'"tau": {m["tau"]}', '"tau": NaN'))
    as_list = edit_json(ws, "cli-list", lambda m: [m])
    deep = edit_json(
        ws, "cli-deep", lambda m: '{"format": "saeguard-guardrail", "x": ' + "[" * 50_000 + "]" * 50_000 + "}"
    )
    gen = ["generate", "--guard", guard, "--model", llama, "--device", "cpu", "--max-new-tokens", "3"]
    a_file = ws.fresh("eval-file")
    a_file.write_text("x")
    cli_mcq = ws.root / "cli-mcq"
    cli_mcq.mkdir(exist_ok=True)
    (cli_mcq / "bad.jsonl").write_text("{oops\n")
    (cli_mcq / "empty.jsonl").write_text("")
    (cli_mcq / "answer4.jsonl").write_text(
        json.dumps({"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4}) + "\n"
    )
    ev = ["eval", "--model", llama, "--device", "cpu", "--no-known"]
    errors = [
        ("inspect missing", ["inspect", str(ws.root / "missing")]),
        ("inspect a file", ["inspect", str(ws.path("forget.txt"))]),
        ("inspect truncated tensors", ["inspect", str(truncated)]),
        ("inspect tau NaN", ["inspect", str(nan)]),
        ("inspect JSON list", ["inspect", str(as_list)]),
        ("inspect JSON nested 50k deep", ["inspect", str(deep)]),
        (
            "generate --guard missing",
            [
                "generate",
                "--guard",
                str(ws.root / "missing"),
                "--prompt",
                "p",
                "--model",
                llama,
                "--device",
                "cpu",
            ],
        ),
        ("generate --max-new-tokens 0", [*gen, "--prompt", "p", "--max-new-tokens", "0"]),
        ("generate --max-new-tokens -3", [*gen, "--prompt", "p", "--max-new-tokens", "-3"]),
        (
            "generate 300-token prompt on gpt2",
            [*gen[:4], gpt2, *gen[5:], "--no-strict", "--prompt", " ".join(["cell"] * 300)],
        ),
        ("generate on other weights (strict)", [*gen[:4], gpt2, *gen[5:], "--prompt", "p"]),
        ("generate --device cuda", [*gen, "--prompt", "p", "--device", "cuda"]),
        ("eval --mcq missing", [*ev, "--mcq", str(ws.root / "missing.jsonl")]),
        ("eval --mcq missing.jsonl (relative)", [*ev, "--mcq", "missing.jsonl"]),
        ("eval --mcq sets/missing (relative)", [*ev, "--mcq", "sets/missing"]),
        ("eval --mcq a bare unknown name", [*ev, "--mcq", "biologyy"]),
        ("eval TopK guard without --sae", [*ev, "--mcq", str(ws.path("mcq.jsonl")), "--guard", topk]),
        (
            "eval TopK guard, another --sae",
            [*ev, "--mcq", str(ws.path("mcq.jsonl")), "--guard", topk, "--sae", sae],
        ),
        ("eval --mcq malformed", [*ev, "--mcq", str(cli_mcq / "bad.jsonl")]),
        ("eval --mcq answer 4", [*ev, "--mcq", str(cli_mcq / "answer4.jsonl")]),
        ("eval --mcq empty", [*ev, "--mcq", str(cli_mcq / "empty.jsonl")]),
        ("eval --mcq wiki:nosuchtopic", [*ev, "--mcq", "wiki:nosuchtopic"]),
        ("eval --output a file", [*ev, "--mcq", str(ws.path("mcq.jsonl")), "--output", str(a_file)]),
        ("eval --limit 0", [*ev, "--mcq", str(ws.path("mcq.jsonl")), "--limit", "0"]),
        ("eval --limit -1", [*ev, "--mcq", str(ws.path("mcq.jsonl")), "--limit", "-1"]),
        ("eval --guard missing", [*ev, "--mcq", str(ws.path("mcq.jsonl")), "--guard", str(ws.root / "nope")]),
        ("generate TopK guard without --sae", [*gen[:2], topk, *gen[3:], "--prompt", "p"]),
        ("generate TopK guard, another --sae", [*gen[:2], topk, *gen[3:], "--prompt", "p", "--sae", sae]),
    ]
    named = {
        "eval --mcq missing": "not found",
        "eval --mcq missing.jsonl (relative)": "not found",
        "eval --mcq sets/missing (relative)": "not found",
        "eval --mcq a bare unknown name": "unknown MCQ set 'biologyy'; choose one of: wiki",
        "eval TopK guard without --sae": "needs its full SAE",
        "eval TopK guard, another --sae": "differs from the one it was fitted with",
    }
    out = error_cases(area, errors, named, "c")
    out.append(
        CliCase(area, "eval --sae without --guard", [*ev, "--mcq", "cwe", "--sae", sae], "usage", batch="c")
    )

    def has(*words: str) -> CliCheck:
        return lambda o, e: None if all(w in o for w in words) else f"stdout lacks {words}: {last_line(o)!r}"

    def same_tau(o: str, _e: str) -> str | None:
        tau = json.loads(o)["tau"]
        return None if tau == ws.guard.tau else f"tau {tau} != {ws.guard.tau}"

    out += [
        CliCase(
            area, "inspect --json", ["inspect", guard, "--json"], "success", check=same_tau, batch="real"
        ),
        CliCase(
            area,
            "inspect a TopK guardrail",
            ["inspect", str(ws.path("topk_guard"))],
            "success",
            check=has("topk"),
            batch="c",
        ),
        CliCase(
            area,
            "generate",
            [*gen, "--prompt", "what is the cell"],
            "success",
            check=has("guarded:", "gate:"),
            batch="c",
        ),
        CliCase(
            area,
            "generate TopK guard with its --sae",
            [*gen[:2], topk, *gen[3:], "--prompt", "what is the cell", "--sae", str(ws.path("topk_sae"))],
            "success",
            check=has("guarded:", "gate:"),
            batch="c",
        ),
        CliCase(
            area, "generate empty prompt", [*gen, "--prompt", ""], "success", check=has("guarded:"), batch="c"
        ),
        CliCase(
            area,
            "generate rich markup prompt",
            [*gen, "--prompt", "[bold]cell[/bold] [red]"],
            "success",
            check=has("[bold]cell[/bold]"),
            batch="c",
        ),
        CliCase(
            area,
            "eval",
            [*ev, "--mcq", str(ws.path("mcq.jsonl")), "--guard", guard],
            "success",
            check=has("mcq"),
            batch="c",
        ),
        CliCase(
            area,
            "eval TopK guard with its --sae",
            [*ev, "--mcq", str(ws.path("mcq.jsonl")), "--guard", topk, "--sae", str(ws.path("topk_sae"))],
            "success",
            check=has("mcq", "gate fired"),
            batch="c",
        ),
    ]
    return out


def run(probe: Probe, ws: Workspace, *, workers: int = 2) -> None:
    chosen = [c for c in cases(ws) if probe._wanted(c.area, c.name)]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "SAEGUARD_CACHE": str(ws.root / "cache"),
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }
    jobs: list[tuple[list[CliCase], Callable[[], list[dict]]]] = []
    for case in [c for c in chosen if c.batch == "real"]:
        jobs.append(([case], partial(_real_batch, case, env)))
    for batch in sorted({c.batch for c in chosen} - {"real"}):
        group = [c for c in chosen if c.batch == batch]
        jobs.append((group, partial(_driver, group, env)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [(group, pool.submit(job)) for group, job in jobs]
        for group, future in futures:
            for case, raw in zip(group, future.result(), strict=True):
                probe.results.append(classify(case, raw))
    cases_commands.run_serve(probe, ws, env)


def _real_batch(case: CliCase, env: dict) -> list[dict]:
    return [_real(case, env)]


def _real(case: CliCase, env: dict) -> dict:
    import time

    started = time.perf_counter()
    proc = subprocess.run(
        [str(REPO / ".venv/bin/saeguard"), *case.argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
        check=False,
    )
    return {
        "code": proc.returncode,
        "out": proc.stdout,
        "err": proc.stderr,
        "seconds": time.perf_counter() - started,
    }


def _driver(group: list[CliCase], env: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cases_path, results_path = Path(tmp) / "cases.json", Path(tmp) / "results.json"
        cases_path.write_text(json.dumps([{"argv": c.argv, "seconds": _seconds(c)} for c in group]))
        proc = subprocess.run(
            [sys.executable, "-m", "scripts.reliability.cli_driver", str(cases_path), str(results_path)],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=1800,
            check=False,
        )
        if not results_path.is_file():
            crash = {"code": 1, "out": proc.stdout, "err": "driver crashed\n" + proc.stderr, "seconds": 0.0}
            return [crash for _ in group]
        return json.loads(results_path.read_text())


def _seconds(case: CliCase) -> int:
    """The case's time limit: bad input must fail fast; a case that may succeed does real work."""
    return WORK_SECONDS if case.expect in ("success", "either") else CASE_SECONDS


def classify(case: CliCase, raw: dict) -> Result:
    code, out, err = raw["code"], raw["out"], raw["err"]
    result = Result(
        case.area, case.name, "saeguard " + " ".join(_short_arg(a) for a in case.argv), case.expect
    )
    result.seconds = raw["seconds"]
    lines = [
        line
        for line in err.strip().splitlines()
        if line.strip() and not line.startswith(("note:", "WARNING:"))
    ]
    result.message = last_line(err) or last_line(out)
    if "Traceback" in err:
        result.message += f" [{_innermost(err)}]"
    if case.expect == "either" and code == 2:  # a refusal is right: judged as an error
        case = replace(case, expect="error")
    if case.expect in ("usage", "error"):
        if code == 124:
            result.outcome = "LATE-CHECK"
        elif "Traceback" in err or code not in (0, 2):
            result.outcome = "TRACEBACK"
        elif code == 0:
            result.outcome = "SILENT-WRONG"
            result.message = f"exit 0: {last_line(out)}"
        elif len(lines) != 1 or not lines[0].startswith("error:"):
            result.outcome = "MULTI-LINE"
            result.message = f"{len(lines)} lines: " + " | ".join(lines[:3])[:300]
        if result.outcome == "OK" and case.check is not None and (problem := case.check(out, err)):
            result.outcome, result.message = "SILENT-WRONG", f"{problem}: {result.message}"
        left = leftovers(case.outputs)
        if left and result.outcome == "OK":
            result.outcome, result.message = "PARTIAL-OUTPUT", result.message + f" (left {', '.join(left)})"
        return result
    if code == 2 and "Traceback" not in err:
        result.outcome = "REFUSED"
    elif code != 0:
        result.outcome = "TRACEBACK"
    elif case.check is not None and (problem := case.check(out, err)):
        result.outcome, result.message = "SILENT-WRONG", problem
    elif stray := STRAY_WARNING.search(err):
        result.outcome, result.message = "MULTI-LINE", f"a warning on stderr: {stray.group(0)[:200]}"
    else:
        result.message = f"exit 0: {last_line(out)}"
    return result


def _innermost(err: str) -> str:
    """file:line of the innermost saeguard frame of a printed traceback."""
    frames = re.findall(r'File "([^"]*saeguard[^"]*)", line (\d+)', err)
    frames = [f for f in frames if "reliability" not in f[0]] or frames
    return f"{package_path(frames[-1][0])}:{frames[-1][1]}" if frames else "?"


def _short_arg(arg: str) -> str:
    return arg if len(arg) <= 60 else arg[:40] + f"...({len(arg)} chars)"

"""Command-line cases beyond fit/generate/eval: explain, attack, experiment, eval --muse, serve, train-sae.

Bad input must give exit status 2 and one ``error:`` line before any model work; outputs that
are files, under files or folders of other files must be refused (and the other files kept);
guards fitted on another model or width must be refused. ``run_serve`` starts a real
``saeguard serve`` process on a free port and talks to it.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from scripts.reliability.cases_artifact import copy_guard, edit_json
from scripts.reliability.cli_types import CliCase, CliCheck, error_cases
from scripts.reliability.fixtures import Workspace
from scripts.reliability.framework import Probe, Result, last_line

REPO = Path(__file__).resolve().parents[2]


class Files:
    """Inputs shared by the cases: bad outputs, corrupt guards, bad question and prompt files."""

    def __init__(self, ws: Workspace) -> None:
        self.a_file = ws.fresh("cmd-file")
        self.a_file.write_text("x")
        self.under_file = self.a_file / "sub"
        self.others = ws.fresh("cmd-others")  # a folder of someone else's files
        self.others.mkdir()
        (self.others / "mine.txt").write_text("keep")
        self.truncated = copy_guard(ws, "cmd-truncated")
        (self.truncated / "guardrail.safetensors").write_bytes(b"\x00" * 10)
        self.nan = edit_json(
            ws, "cmd-nan", lambda m: json.dumps(m).replace(f'"tau": {m["tau"]}', '"tau": NaN')
        )
        folder = ws.root / "cmd-inputs"
        folder.mkdir(exist_ok=True)
        self.bad_mcq = folder / "bad.jsonl"
        self.bad_mcq.write_text("{oops\n")
        self.empty = folder / "empty.txt"
        self.empty.write_text("")
        self.bad_prompts = folder / "prompts.jsonl"
        self.bad_prompts.write_text('{"prompt": 5, "label": "forget"}\n')
        self.config: dict[str, Path] = {}
        for name, data in {
            "not-json": "{oops",
            "list": "[1, 2]",
            "unknown": '{"bogus": 1}',
            "bad-method": '{"methods": ["bogus"]}',
            "bad-target": '{"utility_target": "high"}',
            "target-5": '{"utility_target": 5}',
            "methods-a-string": '{"methods": "dsg"}',
            "eval-batch-0": '{"eval": {"batch_size": 0}}',
            "topic-name-a-number": '{"topics": [{"name": 1, "forget": ["a.txt"], "mcq": "b.jsonl"}]}',
            "gradient-nan": '{"gradient": {"rmu": {"steps": NaN}}}',
            "bad-fit": '{"fit": {"n_features": 0}}',
            "bad-retain": '{"retain": ["wiki:nosuchtopic"]}',
        }.items():
            self.config[name] = folder / f"{name}.json"
            self.config[name].write_text(data)

    def kept(self) -> CliCheck:
        """A check that the folder of other files still holds them."""
        return lambda _o, _e: None if (self.others / "mine.txt").is_file() else "deleted the user's mine.txt"


def cases(ws: Workspace) -> list[CliCase]:
    files = Files(ws)
    return [
        *_explain(ws, files),
        *_attack(ws, files),
        *_experiment(ws, files),
        *_muse(ws, files),
        *_serve(ws, files),
        *_state(ws),
        *_train_sae(ws, files),
    ]


def _explain(ws: Workspace, f: Files) -> list[CliCase]:
    area, guard = "cli:explain", str(ws.path("guard"))

    def ex(name: str, *extra: str, guard_path: str = guard, model: str = "llama") -> list[str]:
        out = str(ws.fresh(f"ex-{name}"))
        return ["explain", guard_path, "-o", out, "--model", str(ws.path(model)), "--device", "cpu", *extra]

    errors = [
        ("missing guard", ex("m", guard_path=str(ws.root / "missing"))),
        ("truncated tensors", ex("t", guard_path=str(f.truncated))),
        ("tau NaN", ex("n", guard_path=str(f.nan))),
        ("TopK guard without --sae", ex("k", guard_path=str(ws.path("topk_guard")))),
        (
            "TopK guard, another --sae",
            ex("k2", "--sae", str(ws.path("sae")), guard_path=str(ws.path("topk_guard"))),
        ),
        ("-o a file", [*ex("f")[:2], "-o", str(f.a_file), *ex("f")[4:]]),
        ("-o under a file", [*ex("u")[:2], "-o", str(f.under_file), *ex("u")[4:]]),
        ("--contexts 0", ex("c", "--contexts", "0")),
        ("--max-chunks -1", ex("x", "--max-chunks", "-1")),
        ("--forget missing.txt", ex("fm", "--forget", str(ws.root / "missing.txt"))),
        ("--forget wiki:nosuchtopic", ex("fw", "--forget", "wiki:nosuchtopic")),
        ("--retain binary.txt", ex("rb", "--retain", str(ws.root / "corpora" / "binary.txt"))),
        ("--model of another width (48)", ex("w", model="wide")),
        ("--model with one layer", ex("s", model="shallow")),
        ("--prompt of 1,100 tokens (1,024 positions)", ex("p", "--prompt", "cell " * 1100)),
        ("--device banana", ex("d", "--device", "banana")),
    ]
    named = {
        "TopK guard without --sae": "needs its full SAE",
        "TopK guard, another --sae": "differs from the one it was fitted with",
        "--prompt of 1,100 tokens (1,024 positions)": "shorten the prompt",
    }
    out = error_cases(area, errors, named, "d")
    topk = ws.fresh("ex-topk")
    topk_argv = ex(
        "tk",
        "--sae",
        str(ws.path("topk_sae")),
        "--prompt",
        "what is the cell",
        guard_path=str(ws.path("topk_guard")),
    )
    topk_argv[3] = str(topk)
    out.append(
        CliCase(
            area,
            "a TopK guard with its --sae",
            topk_argv,
            "success",
            check=lambda _o, _e: None if (topk / "trace.html").is_file() else f"no trace.html in {topk}",
            batch="d",
        )
    )
    kept = ["explain", guard, "-o", str(f.others), "--model", str(ws.path("llama")), "--device", "cpu"]
    out.append(
        CliCase(
            area,
            "-o a folder of other files",
            [*kept, "--max-chunks", "1"],
            "either",
            check=f.kept(),
            batch="d",
        )
    )
    report = ws.fresh("ex-ok")

    def wrote(o: str, _e: str) -> str | None:
        needed = ("index.html", "explain.json", "trace.html")
        missing = [n for n in needed if not (report / n).is_file()]
        return (
            f"missing {missing}"
            if missing
            else (None if "prompt " in o else f"no decision line: {last_line(o)}")
        )

    argv = ex("ok", "--forget", str(ws.path("forget.txt")), "--max-chunks", "2", "--contexts", "2")
    argv[3] = str(report)
    out.append(
        CliCase(
            area,
            "a report and a prompt's trace",
            [*argv, "--prompt", "what is the cell"],
            "success",
            check=wrote,
            batch="d",
        )
    )
    return out


def _attack(ws: Workspace, f: Files) -> list[CliCase]:
    area, guard = "cli:attack", str(ws.path("guard"))

    def at(name: str, *extra: str, guard_path: str = guard, model: str = "llama") -> list[str]:
        out = str(ws.fresh(f"at-{name}"))
        base = ["attack", "--guard", guard_path, "-o", out, "--model", str(ws.path(model)), "--device", "cpu"]
        return [*base, "--mcq", str(ws.path("mcq.jsonl")), "--quick", *extra]

    def output(path: Path) -> list[str]:
        argv = at("o")
        argv[argv.index("-o") + 1] = str(path)
        return argv

    errors = [
        ("missing guard", at("m", guard_path=str(ws.root / "missing"))),
        ("truncated tensors", at("t", guard_path=str(f.truncated))),
        ("-o a file", output(f.a_file)),
        ("-o under a file", output(f.under_file)),
        ("--mcq missing.jsonl", [*at("q")[:-3], "--mcq", str(ws.root / "missing.jsonl"), "--quick"]),
        ("--mcq missing.jsonl (relative)", [*at("qr")[:-3], "--mcq", "missing.jsonl", "--quick"]),
        ("TopK guard without --sae", at("k", guard_path=str(ws.path("topk_guard")))),
        (
            "TopK guard, another --sae",
            at("k2", "--sae", str(ws.path("sae")), guard_path=str(ws.path("topk_guard"))),
        ),
        ("--mcq malformed", [*at("b")[:-3], "--mcq", str(f.bad_mcq), "--quick"]),
        ("--prompts missing.txt", at("pm", "--prompts", str(ws.root / "missing.txt"))),
        ("--prompts binary", at("pb", "--prompts", str(ws.root / "corpora" / "binary.txt"))),
        ("--prompts empty", at("pe", "--prompts", str(f.empty))),
        ("--prompts a number as prompt", at("pn", "--prompts", str(f.bad_prompts))),
        ("--tokens 0", at("t0", "--tokens", "0")),
        ("--tokens -5", at("t5", "--tokens", "-5")),
        ("--padding-tokens -1", at("pt", "--padding-tokens", "-1")),
        ("--source nosuch", at("s", "--source", "nosuch")),
        ("--limit 0", at("l", "--limit", "0")),
        ("--other-limit -1", at("ol", "--other-limit", "-1")),
        ("--permutations bogus", at("pp", "--permutations", "bogus")),
        ("--model of another width (48)", at("w", model="wide")),
        ("--model with one layer", at("sh", model="shallow")),
        ("--device banana", at("d", "--device", "banana")),
    ]
    named = {
        "--mcq missing.jsonl": "not found",
        "--mcq missing.jsonl (relative)": "not found",
        "TopK guard without --sae": "needs its full SAE",
        "TopK guard, another --sae": "differs from the one it was fitted with",
    }
    out = error_cases(area, errors, named, "e")
    out.append(
        CliCase(area, "-o a folder of other files", output(f.others), "either", check=f.kept(), batch="e")
    )
    prompts = ws.root / "cmd-inputs" / "good-prompts.jsonl"
    rows = [
        {"prompt": "what is the cell virus gene", "label": "forget"},
        {"prompt": "the king", "label": "benign"},
    ]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    shown = ws.fresh("at-prompts")

    def prompt_columns(o: str, _e: str) -> str | None:
        if "(known questions)" in o or "Known questions" in (shown / "attack.md").read_text():
            return "--no-known still says known questions"
        text = " ".join(o.split())
        if "forget prompts fired" not in text or "benign prompts FP" not in text:
            return "the --prompts results are not in the table"
        return None if "forget prompts fired" in (shown / "attack.md").read_text() else "not in attack.md"

    argv = at("p", "--no-known", "--tokens", "20", "--padding-tokens", "20", "--prompts", str(prompts))
    argv[argv.index("-o") + 1] = str(shown)
    out.append(
        CliCase(
            area,
            "--no-known and --prompts: shown, not called known",
            argv,
            "success",
            check=prompt_columns,
            batch="e",
        )
    )
    return out


def _experiment(ws: Workspace, f: Files) -> list[CliCase]:
    area = "cli:experiment"

    def xp(*extra: str, name: str = "sequential") -> list[str]:
        base = ["experiment", name, "-o", str(ws.fresh("xp")), "--model", str(ws.path("llama"))]
        return [*base, "--sae", str(ws.path("sae")), "--device", "cpu", "--quick", *extra]

    def output(path: Path) -> list[str]:
        argv = xp()
        argv[argv.index("-o") + 1] = str(path)
        return argv

    errors = [
        ("unknown experiment", xp(name="nosuch")),
        ("--config missing", xp("--config", str(ws.root / "missing.json"))),
        *[(f"--config {key}", xp("--config", str(path))) for key, path in f.config.items()],
        ("-o a file", output(f.a_file)),
        ("-o under a file", output(f.under_file)),
        ("--threads 0", xp("--threads", "0")),
        ("--threads -1", xp("--threads", "-1")),
        ("--device banana", xp("--device", "banana")),
        ("--model missing", [*xp()[:4], "--model", str(ws.root / "missing-model"), *xp()[6:]]),
        ("--sae missing", [*xp()[:6], "--sae", str(ws.root / "missing-sae"), *xp()[8:]]),
        (
            "--model of another width with the SAE of 32",
            [*xp()[:4], "--model", str(ws.path("wide")), *xp()[6:]],
        ),
    ]
    named = {  # the error must name the problem, not a later one
        "--config bad-target": "utility_target must be a number, got 'high'",
        "--config target-5": "utility_target must be at most 1, got 5",
        "--config methods-a-string": "methods must be a list, got 'dsg'",
        "--config eval-batch-0": "batch_size must be at least 1, got 0",
        "--config topic-name-a-number": "name must be a string, got 1",
        "--config gradient-nan": "NaN",
        "--model of another width with the SAE of 32": "48",
    }
    out = error_cases(area, errors, named, "f")

    def kept_or_named(o: str, e: str) -> str | None:
        return f.kept()(o, e) or (
            None if "error:" not in e or "--output" in e else "the error is not about -o"
        )

    out.append(
        CliCase(
            area, "-o a folder of other files", output(f.others), "either", check=kept_or_named, batch="f"
        )
    )
    report = ws.fresh("xp-ok")

    def wrote(_o: str, _e: str) -> str | None:
        return None if (report / "index.html").is_file() else f"no index.html in {report}"

    out.append(
        CliCase(
            area,
            "a quick sequential run on the tiny model",
            output(report),
            "success",
            check=wrote,
            batch="f",
        )
    )
    return out


def _muse(ws: Workspace, f: Files) -> list[CliCase]:
    area, guard = "cli:eval-muse", str(ws.path("guard"))

    def mu(*extra: str, book: str = "emma", guard_path: str = guard, model: str = "llama") -> list[str]:
        base = [
            "eval",
            "--muse",
            book,
            "--guard",
            guard_path,
            "--method",
            "dsg",
            "--model",
            str(ws.path(model)),
        ]
        return [*base, "--device", "cpu", "--output", str(ws.fresh("muse")), *extra]

    def output(path: Path) -> list[str]:
        argv = mu()
        argv[argv.index("--output") + 1] = str(path)
        return argv

    errors = [
        ("unknown novel", mu(book="nosuchbook")),
        ("--limit 1", mu("--limit", "1")),
        ("--method bogus", mu("--method", "bogus")),
        ("--guard with --method ga only", [a if a != "dsg" else "ga" for a in mu()]),
        ("--guard missing", mu(guard_path=str(ws.root / "missing"))),
        ("--guard truncated tensors", mu(guard_path=str(f.truncated))),
        ("--guard TopK without its SAE", mu(guard_path=str(ws.path("topk_guard")))),
        (
            "--guard TopK, another --sae",
            mu("--sae", str(ws.path("sae")), guard_path=str(ws.path("topk_guard"))),
        ),
        (
            "--sae without --guard",
            [a for a in mu("--sae", str(ws.path("topk_sae"))) if a != guard and a != "--guard"],
        ),
        ("--output a file", output(f.a_file)),
        ("--output under a file", output(f.under_file)),
        ("--output a folder of other files", output(f.others)),
        ("--model of another width (48)", mu(model="wide")),
        ("--device banana", mu("--device", "banana")),
    ]
    named = {
        "--guard TopK without its SAE": "needs its full SAE",
        "--guard TopK, another --sae": "differs from the one it was fitted with",
    }
    out = error_cases(area, [(n, a) for n, a in errors if n != "--sae without --guard"], named, "g")
    out += [
        CliCase(area, name, argv, "usage", batch="g")
        for name, argv in errors
        if name == "--sae without --guard"
    ]
    usage = [
        ("--muse and --mcq together", [*mu(), "--mcq", str(ws.path("mcq.jsonl"))]),
        ("--method without --muse", ["eval", "--mcq", str(ws.path("mcq.jsonl")), "--method", "ga"]),
        ("--quick without --muse", ["eval", "--mcq", str(ws.path("mcq.jsonl")), "--quick"]),
    ]
    out += [CliCase(area, name, argv, "usage", batch="g") for name, argv in usage]
    return out


def _serve(ws: Workspace, f: Files) -> list[CliCase]:
    area, guard, llama = "cli:serve", str(ws.path("guard")), str(ws.path("llama"))
    base = ["serve", "--model", llama, "--device", "cpu"]
    busy = _busy_port()
    errors = [
        ("--guard missing", [*base, "--guard", str(ws.root / "missing")]),
        ("--guard truncated tensors", [*base, "--guard", str(f.truncated)]),
        ("--guard 'bad name!'", [*base, "--guard", f"bad name!={guard}"]),
        ("--guard named none", [*base, "--guard", f"none={guard}"]),
        ("the same name twice", [*base, "--guard", f"a={guard}", "--guard", f"a={guard}"]),
        ("--default-guard nosuch", [*base, "--guard", f"bio={guard}", "--default-guard", "nosuch"]),
        ("--model-name 'a+b'", [*base, "--guard", guard, "--model-name", "a+b"]),
        (
            "a llama guard on gpt2 (strict)",
            ["serve", "--model", str(ws.path("gpt2")), "--device", "cpu", "--guard", guard],
        ),
        (
            "a guard on a model of width 48 (--no-strict)",
            ["serve", "--model", str(ws.path("wide")), "--device", "cpu", "--guard", guard, "--no-strict"],
        ),
        (
            "a guard on a 1-layer model (--no-strict)",
            ["serve", "--model", str(ws.path("shallow")), "--device", "cpu", "--guard", guard, "--no-strict"],
        ),
        ("a TopK guard without --sae", [*base, "--guard", str(ws.path("topk_guard"))]),
        (
            "a TopK guard, another --sae",
            [*base, "--guard", str(ws.path("topk_guard")), "--sae", str(ws.path("sae"))],
        ),
        ("--workers 0", [*base, "--guard", guard, "--workers", "0"]),
        ("--max-tokens 0", [*base, "--guard", guard, "--max-tokens", "0"]),
        ("--queue-size -1", [*base, "--guard", guard, "--queue-size", "-1"]),
        ("--on-flag delete", [*base, "--guard", guard, "--on-flag", "delete"]),
        ("--port 70000", [*base, "--guard", guard, "--port", "70000"]),
        ("--port already in use", [*base, "--guard", guard, "--port", str(busy)]),
        ("--host that does not resolve", [*base, "--guard", guard, "--host", "no-such-host.invalid"]),
    ]
    named = {
        "a TopK guard without --sae": "needs its full SAE",
        "a TopK guard, another --sae": "differs from the one it was fitted with",
    }
    return error_cases(area, errors, named, "h")


_HELD: list[socket.socket] = []


def _busy_port() -> int:
    """A loopback port held (listening) for the whole run."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    _HELD.append(sock)
    return int(sock.getsockname()[1])


def _state(ws: Workspace) -> list[CliCase]:
    """Guards applied to a model they were not fitted on."""
    area, guard = "cli:state", str(ws.path("guard"))
    gen = ["generate", "--guard", guard, "--device", "cpu", "--max-new-tokens", "2", "--prompt", "cell"]
    ev = ["eval", "--device", "cpu", "--no-known", "--mcq", str(ws.path("mcq.jsonl")), "--guard", guard]
    errors = [
        ("generate on width 48 (--no-strict)", [*gen, "--model", str(ws.path("wide")), "--no-strict"]),
        ("generate on one layer (--no-strict)", [*gen, "--model", str(ws.path("shallow")), "--no-strict"]),
        ("generate on qwen2 (strict)", [*gen, "--model", str(ws.path("qwen2"))]),
        ("eval on width 48", [*ev, "--model", str(ws.path("wide"))]),
        ("eval on one layer", [*ev, "--model", str(ws.path("shallow"))]),
        (
            "generate a gpt2 guard on llama (strict)",
            [*gen[:2], str(ws.path("gpt2_guard")), *gen[3:], "--model", str(ws.path("llama"))],
        ),
    ]
    out = [CliCase(area, name, argv, "error", batch="h") for name, argv in errors]

    def decided(o: str, _e: str) -> str | None:
        return None if "guarded:" in o and "gate:" in o else f"no guarded text: {last_line(o)}"

    no_strict = [*gen, "--model", str(ws.path("qwen2")), "--no-strict"]
    out.append(
        CliCase(
            area,
            "generate on qwen2 of the same width (--no-strict)",
            no_strict,
            "success",
            check=decided,
            batch="h",
        )
    )
    return out


def _train_sae(ws: Workspace, f: Files) -> list[CliCase]:
    area, llama = "cli:train-sae", str(ws.path("llama"))
    errors = [
        ("--layer 99", ["train-sae", "--layer", "99", "-o", str(ws.fresh("sae")), "--model", llama]),
        (
            "--width 0",
            ["train-sae", "--layer", "0", "--width", "0", "-o", str(ws.fresh("sae")), "--model", llama],
        ),
        ("-o a file", ["train-sae", "--layer", "0", "-o", str(f.a_file), "--model", llama]),
    ]
    return [CliCase(area, name, argv, "error", batch="d") for name, argv in errors]


def run_serve(probe: Probe, ws: Workspace, env: dict[str, str]) -> None:
    """A real ``saeguard serve`` process: a bad and a good request, then Ctrl-C; no traceback anywhere."""
    area = "cli:serve-process"
    names = (
        "answers a bad request with a 400 and a good one with 200",
        "stops on Ctrl-C without a traceback",
    )
    if not any(probe._wanted(area, n) for n in names):
        return
    port = _free_port()
    argv = [
        "serve",
        "--guard",
        f"bio={ws.path('guard')}",
        "--model",
        str(ws.path("llama")),
        "--device",
        "cpu",
    ]
    argv += ["--port", str(port)]
    given = "saeguard " + " ".join(argv)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(REPO / ".venv/bin/saeguard"), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    answers = _talk(url, proc)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    seconds = time.perf_counter() - started
    first = Result(area, names[0], given, "success", seconds=seconds)
    if isinstance(answers, str):
        first.outcome, first.message = "TRACEBACK", answers
    else:
        bad, good = answers
        first.message = f"{bad.status_code}: {bad.json()['error']['message'][:80]}; then {good.status_code}"
        if bad.status_code != 400 or good.status_code != 200:
            first.outcome = "SILENT-WRONG"
    second = Result(area, names[1], given + " (then SIGINT)", "success", seconds=seconds)
    second.message = f"exit {proc.returncode}: {last_line(err) or last_line(out)}"
    if "Traceback" in err or proc.returncode not in (0, 130):
        second.outcome = "TRACEBACK"
    probe.results += [first, second]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _talk(url: str, proc: subprocess.Popen) -> tuple[httpx.Response, httpx.Response] | str:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"the server exited {proc.returncode} before answering"
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)
    else:
        return "the server did not answer /health within 300 s"
    body = {"messages": [{"role": "user", "content": "what is the cell"}], "max_tokens": 2}
    bad = httpx.post(f"{url}/v1/chat/completions", json={**body, "max_tokens": "5"}, timeout=120)
    good = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    return bad, good

"""`--sae` for a TopK guardrail on every command that loads a saved guard (one shared option).

Before, only `generate` had it: `explain`, `serve`, `eval` (with `--mcq` or `--muse`) and
`attack` refused a TopK guardrail with "pass it explicitly (... or --sae PATH)" and had no
such option.
"""

from __future__ import annotations

import json
import sys

import pytest

from saeguard.cli import main
from saeguard.errors import SaeguardError

NEEDS_SAE = "a TopK guardrail needs its full SAE"


def _model(workspace) -> list[str]:
    return ["--model", str(workspace / "model"), "--device", "cpu"]


def test_explain_takes_a_topk_guardrails_sae(cli, workspace, topk_guard, error_lines):
    guard, folder, sae = topk_guard
    args = ["explain", str(folder), "-o", str(workspace / "report"), "--prompt", "what is the cell"]
    code, _, err = cli([*args, *_model(workspace)])
    assert code == 2 and NEEDS_SAE in error_lines(err)[-1]
    code, out, err = cli([*args, *_model(workspace), "--sae", str(sae)])
    assert code == 0, err
    explained = json.loads((workspace / "report" / "explain.json").read_text())
    assert [latent["latent"] for latent in explained["latents"]] == guard.latents.ids.tolist()
    assert "prompt " in out and (workspace / "report" / "trace.html").is_file()


def test_eval_mcq_takes_a_topk_guardrails_sae(cli, workspace, topk_guard, error_lines):
    _, folder, sae = topk_guard
    items = [{"question": f"q{i} cell", "choices": ["a", "b", "c", "d"], "answer": i % 4} for i in range(4)]
    (workspace / "q.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    args = ["eval", "--mcq", str(workspace / "q.jsonl"), "--no-known", "--guard", str(folder)]
    code, _, err = cli([*args, *_model(workspace)])
    assert code == 2 and NEEDS_SAE in error_lines(err)[-1]
    code, out, err = cli([*args, *_model(workspace), "--sae", str(sae)])
    assert code == 0, err
    assert "gate fired" in out


def test_eval_sae_without_a_guard_is_a_usage_error(cli, workspace, error_lines):
    code, _, err = cli(["eval", "--mcq", "wiki:biology", "--sae", "x", *_model(workspace)])
    assert code == 2 and "--sae is a TopK guardrail's SAE: give it with --guard" in err


def test_eval_muse_takes_a_topk_guardrails_sae(cli, workspace, topk_guard, monkeypatch, error_lines):
    _, folder, sae = topk_guard
    seen = {}

    def fake_run_books(model, tokenizer, config, *, sae, guard, output, log):
        seen.update(sae=sae, guard=guard)

    monkeypatch.setattr("saeguard.runs.muse_books.run_books", fake_run_books)
    args = ["eval", "--muse", "emma", "--guard", str(folder), "--method", "dsg", "--quick"]
    args += ["--output", str(workspace / "muse"), *_model(workspace)]
    code, _, err = cli(args)
    assert code == 2 and NEEDS_SAE in error_lines(err)[-1] and not seen
    code, _, err = cli([*args, "--sae", str(sae)])
    assert code == 0, err
    assert seen["guard"].latents.full_sae is not None and seen["sae"] is None  # no second SAE to fit with


def test_attack_takes_a_topk_guardrails_sae(cli, workspace, topk_guard, monkeypatch, error_lines):
    _, folder, sae = topk_guard

    def reached(*_args, **_kwargs):
        raise SaeguardError("the guard loaded: questions next")

    monkeypatch.setattr("saeguard.cli.attack_commands._known_questions", reached)
    args = ["attack", "--guard", str(folder), "-o", str(workspace / "attack"), *_model(workspace)]
    code, _, err = cli(args)
    assert code == 2 and NEEDS_SAE in error_lines(err)[-1]
    code, _, err = cli([*args, "--sae", str(sae)])
    assert code == 2 and error_lines(err)[-1] == "error: the guard loaded: questions next"


def test_serve_takes_a_topk_guardrails_sae(workspace, topk_guard, monkeypatch, capsys):
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    served: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    _, folder, sae = topk_guard

    def run(extra: list[str]) -> int:
        args = ["saeguard", "serve", "--guard", f"topk={folder}", "--port", "8124", *_model(workspace)]
        monkeypatch.setattr(sys, "argv", [*args, *extra])
        try:
            main()
        except SystemExit as exit_:
            return int(exit_.code or 0)
        return 0

    assert run([]) == 2 and NEEDS_SAE in capsys.readouterr().err and not served
    assert run(["--sae", str(sae)]) == 0, capsys.readouterr().err
    assert "serving model with guards topk" in capsys.readouterr().out and "app" in served


def test_every_guard_loading_command_shares_one_sae_option():
    from saeguard.cli import attack_commands, eval_commands, explain_commands, guard_commands, serve_commands
    from saeguard.cli.options import GuardSae

    commands = [
        attack_commands.attack_command,
        eval_commands.eval_command,
        explain_commands.explain,
        guard_commands.generate,
        serve_commands.serve,
    ]
    for command in commands:
        assert command.__annotations__["sae"] in ("GuardSae", GuardSae), command.__name__

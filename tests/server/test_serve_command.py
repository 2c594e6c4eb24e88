"""`saeguard serve`: options checked before the model loads, then the app served by uvicorn."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from saeguard.cli import main


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``saeguard ARGS`` in-process with uvicorn.run replaced; returns (code, out, err, served)."""
    import uvicorn

    served: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    monkeypatch.delenv("SAEGUARD_API_KEY", raising=False)

    def run(args):
        monkeypatch.setattr(sys, "argv", ["saeguard", *args])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return code, out, err, served

    return run


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


@pytest.fixture
def guard_dirs(tiny, tmp_path):
    _, _, guards = tiny
    return {name: guard.save(tmp_path / f"{name}-guard") for name, guard in guards.items()}


def test_serve_loads_the_model_and_named_guards_and_binds_loopback(cli, saved_model, guard_dirs, monkeypatch):
    monkeypatch.setenv("SAEGUARD_API_KEY", "sesame")
    code, out, err, served = cli(
        [
            "serve",
            "--model",
            str(saved_model),
            "--guard",
            f"bio={guard_dirs['bio']}",
            "--guard",
            str(guard_dirs["lore"]),
            "--on-flag",
            "refuse",
            "--device",
            "cpu",
            "--port",
            "8123",
        ]
    )
    assert code == 0, err
    assert (served["host"], served["port"]) == ("127.0.0.1", 8123)
    assert f"serving {saved_model.name} with guards bio, lore-guard" in out
    client = TestClient(served["app"])
    assert client.get("/v1/models").status_code == 401  # the key came from SAEGUARD_API_KEY
    headers = {"authorization": "Bearer sesame"}
    ids = [m["id"] for m in client.get("/v1/models", headers=headers).json()["data"]]
    assert ids == [
        saved_model.name,
        f"{saved_model.name}+bio",
        f"{saved_model.name}+lore-guard",
        f"{saved_model.name}+none",
    ]
    body = {"messages": [{"role": "user", "content": "what is the cell virus gene protein"}], "max_tokens": 3}
    answer = client.post("/v1/chat/completions", json=body, headers=headers).json()
    assert answer["choices"][0]["finish_reason"] == "content_filter"  # --on-flag refuse


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--guard", "nowhere"], "holds no guardrail: create one with `saeguard fit`"),
        (["--guard", "a+b={bio}"], "must be letters"),
        (["--guard", "none={bio}"], "not 'none'"),
        (["--guard", "x={bio}", "--guard", "x={lore}"], "used twice"),
        (["--guard", "{bio}", "--default-guard", "chem"], "no --guard has that name"),
        (["--model-name", "a+b"], "--model-name"),
        (["--guard", "{bio}", "--port", "{busy}"], "cannot listen on 127.0.0.1:"),
        (
            ["--guard", "{bio}", "--host", "no-such-host.invalid"],
            "--host no-such-host.invalid: cannot resolve",
        ),
    ],
)
def test_bad_serve_options_fail_in_one_line_before_loading(
    cli, guard_dirs, busy_port, args, message, monkeypatch
):
    import saeguard.cli.serve_commands as commands

    monkeypatch.setattr(
        commands, "load_cli_model", lambda *a: pytest.fail("loaded the model before checking")
    )
    filled = [a.format(bio=guard_dirs["bio"], lore=guard_dirs["lore"], busy=busy_port) for a in args]
    code, _, err, served = cli(["serve", *filled])
    assert code == 2 and not served
    assert message in err and len(err.strip().splitlines()) == 1


def test_an_unknown_policy_is_a_usage_error(cli):
    code, _, err, served = cli(["serve", "--on-flag", "delete"])
    assert code == 2 and not served and "on-flag" in err

"""The command line on a tiny model saved to disk: fit, inspect, generate, errors."""

from __future__ import annotations

import json
import sys

import pytest

from saeguard.cli import main
from saeguard.testing import (
    FORGET_WORDS,
    RETAIN_WORDS,
    corpus,
    make_tokenizer,
    plant_forget_direction,
    random_sae,
    tiny_llama,
)


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["saeguard", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def workspace(tmp_path):
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    model.save_pretrained(tmp_path / "model")
    make_tokenizer().save_pretrained(tmp_path / "model")
    sae.save_model(tmp_path / "sae")
    (tmp_path / "forget.txt").write_text("\n\n".join(corpus(FORGET_WORDS, 24, 40, 1)))
    (tmp_path / "retain.jsonl").write_text(
        "\n".join(json.dumps({"text": t}) for t in corpus(RETAIN_WORDS, 24, 40, 2))
    )
    return tmp_path


def fit_args(ws, output, *extra: str) -> list[str]:
    return [
        "fit",
        "--model",
        str(ws / "model"),
        "--sae",
        str(ws / "sae"),
        "--forget",
        str(ws / "forget.txt"),
        "--retain",
        str(ws / "retain.jsonl"),
        "--output",
        str(output),
        "--layer",
        "1",
        "-n",
        "2",
        "--ratio-percentile",
        "90",
        "--seq-len",
        "32",
        *extra,
    ]


def test_fit_inspect_generate_round_trip(workspace, monkeypatch, capsys):
    code, out, _ = run_cli(fit_args(workspace, workspace / "guard", "--clamp", "10x"), monkeypatch, capsys)
    assert code == 0 and (workspace / "guard" / "guardrail.json").is_file()
    code, out, _ = run_cli(["inspect", str(workspace / "guard"), "--json"], monkeypatch, capsys)
    summary = json.loads(out)
    assert code == 0 and summary["n_features"] == 2 and summary["selection"]["latent_ids"][0] == 37
    code, out, _ = run_cli(
        [
            "generate",
            "--guard",
            str(workspace / "guard"),
            "--model",
            str(workspace / "model"),
            "--prompt",
            "what is the cell virus gene",
            "--prompt",
            "the king of the city",
            "--max-new-tokens",
            "4",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0 and "FLAGGED" in out and "passed" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--clamp", "0"], "clamp must be a positive number"),
        (["--gate-percentile", "101"], "gate_percentile must be a percentile"),
        (["--n-features", "500"], "larger than the"),
    ],
)
def test_bad_fit_input_prints_one_line_and_writes_no_artifact(extra, message, workspace, monkeypatch, capsys):
    code, _, err = run_cli(fit_args(workspace, workspace / "guard", *extra), monkeypatch, capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
    assert not (workspace / "guard").exists()
    assert not list(workspace.glob(".guard*"))


def test_unreadable_corpus_and_missing_sae_are_one_line_errors(workspace, monkeypatch, capsys):
    args = fit_args(workspace, workspace / "guard")
    args[args.index("--forget") + 1] = str(workspace / "missing.txt")
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "cannot be read" in err and len(err.strip().splitlines()) == 1
    args = fit_args(workspace, workspace / "guard")
    args[args.index("--sae") + 1] = str(workspace / "nope")
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "SAE" in err and len(err.strip().splitlines()) == 1

"""The command line on a tiny model saved to disk: fit, inspect, generate, errors."""

from __future__ import annotations

import json

import pytest


def test_fit_inspect_generate_round_trip(workspace, cli, fit_args):
    code, out, _ = cli(fit_args(workspace / "guard", "--clamp", "10x"))
    assert code == 0 and (workspace / "guard" / "guardrail.json").is_file()
    code, out, _ = cli(["inspect", str(workspace / "guard"), "--json"])
    summary = json.loads(out)
    assert code == 0 and summary["n_features"] == 2 and summary["selection"]["latent_ids"][0] == 37
    code, out, _ = cli(
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
def test_bad_fit_input_prints_one_line_and_writes_no_artifact(extra, message, workspace, cli, fit_args):
    code, _, err = cli(fit_args(workspace / "guard", *extra))
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
    assert not (workspace / "guard").exists()
    assert not list(workspace.glob(".guard*"))


def test_unreadable_corpus_and_missing_sae_are_one_line_errors(workspace, cli, fit_args):
    args = fit_args(workspace / "guard")
    args[args.index("--forget") + 1] = str(workspace / "missing.txt")
    code, _, err = cli(args)
    assert code == 2 and "cannot be read" in err and len(err.strip().splitlines()) == 1
    args = fit_args(workspace / "guard")
    args[args.index("--sae") + 1] = str(workspace / "nope")
    code, _, err = cli(args)
    assert code == 2 and "SAE" in err and len(err.strip().splitlines()) == 1

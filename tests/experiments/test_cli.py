"""`saeguard experiment NAME`: one-line errors before any work, a full run on a saved tiny model."""

from __future__ import annotations

import json
import sys

import pytest

from saeguard.cli import main


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("SAEGUARD_CACHE", str(tmp_path / "cache"))  # statistics of the tiny model stay here

    def run(args: list[str]) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["saeguard", *args])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_unknown_experiment_and_unknown_setting_are_one_line_errors(cli, tmp_path):
    code, _, err = cli(["experiment", "forgetting", "--output", str(tmp_path / "x")])
    assert code == 2 and err.count("\n") == 1
    assert "unknown experiment 'forgetting'" in err and "sequential" in err and "zero-shot" in err
    (tmp_path / "bad.json").write_text(json.dumps({"n_featurs": [5]}))
    code, _, err = cli(
        ["experiment", "ablation", "--config", str(tmp_path / "bad.json"), "-o", str(tmp_path / "y")]
    )
    assert code == 2 and err.count("\n") == 1 and "unknown ablation settings ['n_featurs']" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_ablation_runs_end_to_end_on_a_saved_model_and_sae(cli, world, tmp_path):
    world.model.save_pretrained(tmp_path / "model")
    world.tokenizer.save_pretrained(tmp_path / "model")
    world.sae.save_model(tmp_path / "sae")
    settings = {
        "forget": [world.bio],
        "retain": [world.retain],
        "forget_mcq": [world.bio_mcq],
        "utility_mcq": [world.utility_mcq],
        "clamp": ["20x"],
        "gate_percentile": [95],
        "ratio_percentile": [90],
        "n_features": [1],
        "fit": {
            "layer": 1,
            "n_features": 1,
            "ratio_percentile": 90,
            "clamp": "20x",
            "gate_percentile": 95,
            "seq_len": 32,
            "max_forget_chunks": 8,
            "max_retain_chunks": 8,
            "calibration_size": 16,
        },
        "eval": {"known_filter": False, "mcq_limit": None},
    }
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    out = tmp_path / "run"
    args = ["experiment", "ablation", "--model", str(tmp_path / "model"), "--sae", str(tmp_path / "sae")]
    code, stdout, err = cli(
        [*args, "--config", str(tmp_path / "settings.json"), "-o", str(out), "--device", "cpu"]
    )
    assert code == 0, err
    assert "dsg centre: forget accuracy" in stdout and "2 points computed" in stdout
    # the demo preset on a 256-position model: its long runs and answers are shortened
    assert "calibration_long_tokens 2000 -> 128 (256 positions)" in err  # the CLI lowers it first
    assert "calibration_answer_tokens 64 -> 64 (256 positions)" not in stdout
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["experiment"] == "ablation" and [r["key"] for r in saved["records"]] == [
        "dsg:p_ratio=90,n=1,c=20x,p_dyn=95",
        "static:p_ratio=90,n=1,c=20x",
    ]
    assert saved["config"]["fit"]["clamp"] == "20x" and (out / "index.html").is_file()


def test_threads_below_one_is_a_usage_error_not_a_traceback(cli, tmp_path):
    # Regression (reliability probe): --threads 0 / -1 reached torch.set_num_threads (RuntimeError).
    for threads in ("0", "-1"):
        code, _, err = cli(["experiment", "sequential", "--threads", threads, "-o", str(tmp_path / "x")])
        assert code == 2 and "--threads" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_an_sae_of_another_width_fails_before_any_point_naming_both_widths(cli, world, tmp_path):
    from saeguard.testing import tiny_llama

    tiny_llama(hidden_size=48).save_pretrained(tmp_path / "wide")
    world.tokenizer.save_pretrained(tmp_path / "wide")
    world.sae.save_model(tmp_path / "sae")  # reads 32-wide activations
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "experiment",
            "sequential",
            "--quick",
            "--model",
            str(tmp_path / "wide"),
            "--sae",
            str(tmp_path / "sae"),
        ]
        + ["-o", str(out), "--device", "cpu"]
    )
    last = err.strip().splitlines()[-1]  # earlier lines: this test's own save_pretrained progress
    assert code == 2 and err.count("error:") == 1 and last.startswith("error:"), err
    assert "SAE width mismatch: the SAE reads 32-dim activations but the model's hidden size is 48" in last
    assert not out.exists()  # nothing ran, nothing written


def test_a_setting_of_the_wrong_type_is_refused_before_the_model_loads(cli, tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"utility_target": "high"}))
    out = tmp_path / "run"
    code, _, err = cli(
        ["experiment", "sequential", "--config", str(tmp_path / "bad.json"), "-o", str(out)]
        + ["--model", str(tmp_path / "no-model")]
    )
    assert code == 2 and err.count("\n") == 1
    assert "sequential settings: utility_target must be a number, got 'high'" in err
    assert not out.exists()

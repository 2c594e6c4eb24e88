"""`saeguard demo`: the demo preset by default, options override it, checks before work."""

from __future__ import annotations

from dataclasses import replace

import pytest

import saeguard.demo as demo_module
from saeguard.config import Clamp, preset
from saeguard.demo import DemoConfig


@pytest.fixture
def runs(monkeypatch) -> list[tuple[DemoConfig, dict]]:
    """Replace run_demo: record its config and keyword arguments."""
    seen: list[tuple[DemoConfig, dict]] = []
    monkeypatch.setattr(demo_module, "run_demo", lambda config, output, **kw: seen.append((config, kw)))
    return seen


def test_demo_without_options_runs_the_demo_config(tmp_path, cli, runs):
    code, out, _ = cli(["demo", "-o", str(tmp_path / "report"), "--device", "cpu"])
    assert code == 0 and f"report: {tmp_path / 'report' / 'demo.html'}" in out
    [(config, kwargs)] = runs
    assert config == DemoConfig() and config.fit == preset("demo")
    assert kwargs["device"] == "cpu"


def test_demo_options_override_the_fit_and_the_data(tmp_path, cli, runs):
    args = ["demo", "-o", str(tmp_path / "r"), "-n", "5", "--clamp", "10x", "--forget-items", "12"]
    code, _, _ = cli(
        [*args, "--permutations", "all", "--sae", "default", "--preset", "paper", "--layer", "6"]
    )
    assert code == 0
    [(config, _)] = runs
    fit = replace(preset("paper"), layer=6, n_features=5, clamp=Clamp(10.0, relative=True))
    assert config == replace(DemoConfig(), fit=fit, forget_items=12, permutations="all", sae=None)


def test_demo_output_under_a_file_fails_before_running(tmp_path, cli, runs, error_lines):
    (tmp_path / "file").write_text("x")
    code, _, err = cli(["demo", "-o", str(tmp_path / "file" / "report")])
    assert code == 2 and runs == [] and len(error_lines(err)) == 1 and "is a file" in err

"""Shared CLI test helpers: run `saeguard` in-process, a workspace with a tiny model and SAE on disk."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from saeguard import Guardrail
from saeguard.cli import main
from saeguard.errors import CalibrationWarning, SaeguardError
from saeguard.testing import (
    FORGET_WORDS,
    RETAIN_WORDS,
    corpus,
    make_tokenizer,
    plant_forget_direction,
    random_sae,
    tiny_gpt2,
    tiny_llama,
)

CliRunner = Callable[[list[str]], tuple[int, str, str]]


@pytest.fixture
def cli(monkeypatch, capsys) -> CliRunner:
    """Run ``saeguard ARGS`` through ``main()``; returns (exit code, stdout, stderr)."""

    def run(args: list[str]) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["saeguard", *args])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """tmp_path with model/ (tiny Llama, 1024 positions), gpt2/ (256), sae/, forget.txt, retain.jsonl."""
    model, sae = plant_forget_direction(tiny_llama(max_positions=1024), random_sae("jumprelu"))
    model.save_pretrained(tmp_path / "model")
    make_tokenizer().save_pretrained(tmp_path / "model")
    tiny_gpt2(max_positions=256).save_pretrained(tmp_path / "gpt2")
    make_tokenizer().save_pretrained(tmp_path / "gpt2")
    sae.save_model(tmp_path / "sae")
    (tmp_path / "forget.txt").write_text("\n\n".join(corpus(FORGET_WORDS, 24, 40, 1)))
    (tmp_path / "retain.jsonl").write_text(
        "\n".join(json.dumps({"text": t}) for t in corpus(RETAIN_WORDS, 24, 40, 2))
    )
    return tmp_path


@pytest.fixture
def fit_args(workspace: Path) -> Callable[..., list[str]]:
    """``fit_args(output, *extra, model="model")``: `saeguard fit` on the workspace, seconds-sized."""
    return lambda output, *extra, model="model": _fit_args(workspace, output, *extra, model=model)


def _fit_args(ws: Path, output: Path, *extra: str, model: str) -> list[str]:
    return [
        "fit",
        "--model",
        str(ws / model),
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
        "--device",
        "cpu",
        *extra,
    ]


class Fits(list):
    """Configs Guardrail.fit was called with; ``models`` the models it got."""

    models: list


@pytest.fixture
def fits(monkeypatch) -> Fits:
    """Replace Guardrail.fit: record the config and model it gets, then stop with a one-line error."""
    seen = Fits()
    seen.models = []

    def fake(cls, model, tokenizer, sae, *, forget, retain, config=None, **_):
        seen.append(config)
        seen.models.append(model)
        raise SaeguardError("stopped by the test")

    monkeypatch.setattr(Guardrail, "fit", classmethod(fake))
    return seen


@pytest.fixture
def error_lines() -> Callable[[str], list[str]]:
    """Non-blank lines of a stderr text."""
    return lambda err: [line for line in err.strip().splitlines() if line.strip()]


@pytest.fixture
def topk_guard(workspace: Path) -> tuple[Guardrail, Path, Path]:
    """(guard, its folder, its SAE's folder): a TopK guardrail fitted on the workspace's model."""
    sae = random_sae("topk")
    sae.save_model(workspace / "topk_sae")
    model = tiny_llama(max_positions=1024)
    model.load_state_dict(type(model).from_pretrained(workspace / "model").state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # 8 documents a side: too few, on purpose
        guard = Guardrail.fit(
            model,
            make_tokenizer(),
            workspace / "topk_sae",
            forget=corpus(FORGET_WORDS, 8, 30, 1),
            retain=corpus(RETAIN_WORDS, 8, 30, 2),
            layer=1,
            n_features=2,
            ratio_percentile=90,
            seq_len=32,
            calibration_size=8,
            show_progress=False,
        )
    return guard, guard.save(workspace / "topk_guard"), workspace / "topk_sae"

"""Fit options come from FitConfig: one option per field, its default and help from the field."""

from __future__ import annotations

import dataclasses

import pytest
import typer.main

from saeguard.cli import _register, app
from saeguard.cli.fit_options import option_name, resolve_settings
from saeguard.config import PRESETS, Clamp, FitConfig, preset
from saeguard.demo import DemoConfig
from saeguard.errors import SaeguardError

GRID_AXES = {"ratio_percentile", "n_features", "clamp", "gate_percentile"}


@pytest.fixture(scope="module")
def commands():
    _register()
    return typer.main.get_command(app).commands  # type: ignore[attr-defined]


def _options(command) -> dict[str, object]:
    return {opt: param for param in command.params for opt in param.opts}


@pytest.mark.parametrize(
    ("name", "shown_preset", "skipped"),
    [("fit", "paper", set()), ("demo", "demo", set()), ("sweep", "paper", GRID_AXES)],
)
def test_every_fitconfig_field_is_an_option_with_its_help_and_default(name, shown_preset, skipped, commands):
    options = _options(commands[name])
    shown = preset(shown_preset)
    for spec in dataclasses.fields(FitConfig):
        if spec.name in skipped:
            continue
        default, text = FitConfig.option(spec.name)
        param = options[option_name(spec.name)]
        assert param.help.startswith(text)
        value = getattr(shown, spec.name)
        if value is not None:
            assert param.help.endswith(f"\\[default: {value}]"), (spec.name, param.help)
        if shown_preset == "paper":
            assert value == default
        assert param.default is None  # unset options keep the preset's value
    assert options["--preset"].default == shown_preset


def test_sweep_grid_axes_are_sweep_options_not_fit_options(commands):
    options = _options(commands["sweep"])
    assert options["--clamp"].multiple and options["--n-features"].multiple
    assert "-n" not in options


def test_every_model_command_takes_device_and_dtype(commands):
    for name in ("fit", "generate", "eval", "sweep", "compare", "demo"):
        options = _options(commands[name])
        assert options["--device"].default == "auto", name
        assert options["--dtype"].default == "float32", name


def test_preset_paper_is_fitconfig_defaults():
    assert preset("paper") == FitConfig() and PRESETS["paper"] == {}


def test_preset_demo_is_the_demo_config_fit_and_the_measured_settings():
    assert DemoConfig().fit == preset("demo")
    assert preset("demo") == FitConfig(
        layer=6,
        n_features=20,
        ratio_percentile=95.0,
        gate_percentile=85.0,
        clamp=Clamp(5.0, relative=True),
        gate_statistic="activation",
        clamp_scope="input",
        seq_len=256,
        max_forget_chunks=400,
        max_retain_chunks=800,
        gate_rule="sentence",
        window_tokens=16,
        min_window_tokens=8,
        min_sentence_tokens=1,
        calibration_long_tokens=2000,
        calibration_answer_tokens=64,
        seed=0,
    )


def test_preset_returns_a_fresh_config_each_time():
    first = preset("demo")
    first.n_features = 3
    assert preset("demo").n_features == 20


def test_unknown_preset_is_an_error():
    with pytest.raises(SaeguardError, match="unknown preset 'wmdp': use one of paper, demo"):
        preset("wmdp")


def test_given_options_override_the_preset_and_max_chunks_sets_both_caps():
    settings = resolve_settings("demo", {"layer": "3", "max_chunks": 5, "max_retain_chunks": 7, "seed": None})
    assert settings.config.layer == 3 and settings.config.seed == 0
    assert (settings.config.max_forget_chunks, settings.config.max_retain_chunks) == (5, 7)
    assert settings.given == {"layer", "max_forget_chunks", "max_retain_chunks"}
    assert (
        resolve_settings("paper", {"layer": "blocks.2.hook_resid_post"}).config.layer
        == "blocks.2.hook_resid_post"
    )


def test_bad_option_values_are_one_line_errors():
    with pytest.raises(SaeguardError, match="cannot read clamp 'lots'"):
        resolve_settings("paper", {"clamp": "lots"})
    with pytest.raises(SaeguardError, match="ratio_percentile must be a percentile"):
        resolve_settings("paper", {"ratio_percentile": 120.0})

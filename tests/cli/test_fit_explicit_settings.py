"""Settings the user typed are checked as typed: a length that does not fit the model and a setting
that clashes with the preset's are refused with the option, the limit or the preset named."""

from __future__ import annotations

from dataclasses import replace

import pytest

from saeguard.cli.fit_options import resolve_settings
from saeguard.cli.options import fit_length
from saeguard.config import FitConfig, preset
from saeguard.errors import SaeguardError
from saeguard.testing import tiny_gpt2

HALF = "is longer than half the model's 256 positions (the chat template needs the rest)"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "--calibration-long-tokens",
            "5000",
            f"--calibration-long-tokens 5000 {HALF}: pass --calibration-long-tokens 128 or less, or omit it",
        ),
        (
            "--calibration-answer-tokens",
            "100",
            f"--calibration-answer-tokens 100 plus prompt_max_tokens 64 {HALF}: "
            "pass --calibration-answer-tokens 64 or less, or omit it",
        ),
    ],
)
def test_an_explicit_calibration_length_over_the_positions_is_refused_before_the_fit(
    option, value, message, workspace, cli, fit_args, fits, error_lines
):
    output = workspace / "guard"
    code, _, err = cli(fit_args(output, option, value, model="gpt2"))  # 256 positions
    assert code == 2 and error_lines(err) == [f"error: {message}"]
    assert fits == [] and not output.exists()


def test_preset_calibration_lengths_are_lowered_with_a_note_and_explicit_ones_that_fit_are_kept(
    workspace, cli, fit_args, fits
):
    args = fit_args(
        workspace / "guard", "--preset", "demo", "--calibration-answer-tokens", "32", model="gpt2"
    )
    code, _, err = cli(args)
    assert code == 2 and "stopped by the test" in err
    assert "lowered to fit the model: calibration_long_tokens 2000 -> 128 (256 positions)" in err
    assert "calibration_answer_tokens" not in err
    assert (fits[0].calibration_long_tokens, fits[0].calibration_answer_tokens) == (128, 32)


def test_an_explicit_answer_length_after_a_prompt_filling_half_the_positions_says_to_turn_it_off():
    config = FitConfig(prompt_max_tokens=200, calibration_answer_tokens=10)
    with pytest.raises(SaeguardError) as caught:
        fit_length(config, tiny_gpt2(max_positions=256), given={"calibration_answer_tokens"})
    assert str(caught.value) == (
        f"--calibration-answer-tokens 10 plus prompt_max_tokens 200 {HALF}: "
        "pass --calibration-answer-tokens 0 (off) or a smaller --prompt-max-tokens, or omit it"
    )


def test_a_window_below_the_presets_smallest_window_names_the_preset_and_the_fix(
    workspace, cli, fit_args, fits, error_lines
):
    output = workspace / "guard"
    code, _, err = cli(fit_args(output, "--preset", "demo", "--window-tokens", "4"))
    assert code == 2 and error_lines(err) == [
        f"error: {preset('demo').gate_rule} rule: min_window_tokens (8) must not exceed window_tokens (4); "
        "--preset demo set min_window_tokens 8: also pass --min-window-tokens, or drop --window-tokens"
    ]
    assert fits == [] and not output.exists()
    cli(fit_args(output, "--preset", "demo", "--window-tokens", "4", "--min-window-tokens", "4"))
    assert (fits[0].window_tokens, fits[0].min_window_tokens) == (4, 4)


def test_a_clash_with_a_default_names_the_preset_it_came_from():
    with pytest.raises(SaeguardError) as caught:
        resolve_settings("paper", {"prompt_max_tokens": 4})
    assert str(caught.value) == (
        "prompt_min_tokens (8) must not exceed prompt_max_tokens (4); "
        "--preset paper set prompt_min_tokens 8: also pass --prompt-min-tokens, or drop --prompt-max-tokens"
    )


def test_a_clash_between_two_typed_settings_is_reported_as_the_config_reports_it():
    typed = {"window_tokens": 4, "min_window_tokens": 6}
    with pytest.raises(SaeguardError) as caught:
        resolve_settings("demo", typed)
    with pytest.raises(SaeguardError) as direct:
        replace(preset("demo"), **typed).validate()
    assert str(caught.value) == str(direct.value) and "--preset" not in str(caught.value)

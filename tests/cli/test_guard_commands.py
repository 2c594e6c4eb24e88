"""`saeguard fit`: checks before work (output, overwrite, lengths, SAE), settings reach the fit."""

from __future__ import annotations

from dataclasses import replace

import pytest

from saeguard.config import Clamp, FitConfig, preset


def test_fit_refuses_to_overwrite_a_guardrail_without_force(workspace, cli, fit_args, error_lines):
    code, _, _ = cli(fit_args(workspace / "guard"))
    assert code == 0
    first = (workspace / "guard" / "guardrail.safetensors").read_bytes()
    code, _, err = cli(fit_args(workspace / "guard", "-n", "3"))
    assert code == 2 and error_lines(err) == [
        f"error: --output {workspace / 'guard'} already holds a guardrail: pass --force to replace it"
    ]
    assert (workspace / "guard" / "guardrail.safetensors").read_bytes() == first
    code, out, _ = cli(fit_args(workspace / "guard", "-n", "3", "--force"))
    assert code == 0 and "features 3" in out
    assert (workspace / "guard" / "guardrail.safetensors").read_bytes() != first


@pytest.mark.parametrize("where", ["file", "under_file", "other_folder"])
def test_bad_output_fails_before_the_model_loads_or_the_fit_runs(
    where, workspace, cli, fit_args, fits, monkeypatch, error_lines
):
    import saeguard.hf.models as models

    loads: list[str] = []
    monkeypatch.setattr(models, "load_model", lambda name, **_: loads.append(name))
    (workspace / "taken.txt").write_text("x")
    (workspace / "notes").mkdir()
    (workspace / "notes" / "mine.txt").write_text("keep me")
    output = {
        "file": workspace / "taken.txt",
        "under_file": workspace / "taken.txt" / "guard",
        "other_folder": workspace / "notes",
    }[where]
    code, _, err = cli(fit_args(output, "--force"))
    assert code == 2 and len(error_lines(err)) == 1 and str(output) in err
    assert loads == [] and fits == []
    assert (workspace / "taken.txt").read_text() == "x"
    assert (workspace / "notes" / "mine.txt").read_text() == "keep me"


def test_no_fit_option_means_fitconfig_defaults(workspace, cli, fit_args, fits):
    args = fit_args(workspace / "guard")
    for option in ("--layer", "-n", "--ratio-percentile", "--seq-len"):
        index = args.index(option)
        del args[index : index + 2]
    code, _, err = cli(args)
    assert code == 2 and "stopped by the test" in err
    assert fits == [FitConfig()]


def test_preset_demo_is_the_demo_settings_and_explicit_options_override_it(workspace, cli, fit_args, fits):
    args = fit_args(workspace / "guard")
    for option in ("--layer", "-n", "--ratio-percentile"):
        index = args.index(option)
        del args[index : index + 2]
    cli([*args, "--preset", "demo"])
    cli([*args, "--preset", "demo", "-n", "7", "--clamp", "3x", "--max-chunks", "9"])
    # the preset's 2,000-token calibration runs are lowered to half the tiny model's 1,024 positions
    demo = replace(preset("demo"), calibration_long_tokens=512)
    assert fits[0] == FitConfig(**{**demo.__dict__, "seq_len": 32})
    assert fits[1] == FitConfig(
        **{
            **demo.__dict__,
            "seq_len": 32,
            "n_features": 7,
            "clamp": Clamp(3.0, relative=True),
            "max_forget_chunks": 9,
            "max_retain_chunks": 9,
        }
    )


def test_default_seq_len_is_lowered_on_a_short_model_and_an_explicit_one_is_refused(
    workspace, cli, fit_args, fits, error_lines
):
    args = fit_args(workspace / "guard", model="gpt2")
    index = args.index("--seq-len")
    del args[index : index + 2]
    code, _, err = cli(args)
    assert "lowered to fit the model: seq_len 1024 -> 256 (256 positions)" in err
    assert fits[-1].seq_len == 256
    code, _, err = cli([*args, "--seq-len", "1024"])
    assert code == 2 and len(fits) == 1
    assert error_lines(err) == [
        "error: --seq-len 1024 is longer than the model's 256 positions: pass --seq-len 256 or less"
    ]


def test_default_sae_on_another_model_is_a_one_line_error(workspace, cli, fit_args, fits, error_lines):
    args = fit_args(workspace / "guard")
    args[args.index("--sae") + 1] = "default"
    code, _, err = cli(args)
    assert code == 2 and fits == []
    assert error_lines(err)[0].startswith(f"error: no default SAE for model '{workspace / 'model'}'")


def test_fit_loads_the_model_on_the_device_and_in_the_dtype_given(workspace, cli, fit_args, fits):
    import torch

    cli(fit_args(workspace / "guard", "--dtype", "bfloat16"))
    parameter = next(fits.models[-1].parameters())
    assert parameter.dtype == torch.bfloat16 and parameter.device.type == "cpu"


def test_bad_device_fails_before_the_sae_or_the_model_loads(workspace, cli, fit_args, fits, monkeypatch):
    import saeguard.cli.guard_commands as commands

    sae_lookups: list[str | None] = []
    monkeypatch.setattr(commands, "resolve_sae", lambda spec, model: sae_lookups.append(spec))
    code, _, err = cli(fit_args(workspace / "guard", "--device", "gpu0"))
    assert code == 2 and err.strip() == "error: unknown --device 'gpu0': use cpu, cuda, cuda:N, mps or auto"
    assert sae_lookups == [] and fits == []


def test_fit_says_what_it_did_and_warns_in_one_yellow_line_on_a_small_retain_side(workspace, cli, fit_args):
    code, out, err = cli(fit_args(workspace / "guard"))
    assert code == 0
    assert "forget: 24 documents" in out and "retain: 24 documents" in out
    assert "calibration inputs" in out and "bootstrap 95% interval" in out and "latents selected" in out
    warnings = [line for line in err.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1
    assert "only 24 retain calibration inputs" in warnings[0]
    assert warnings[0].endswith(
        "add more retain text, e.g. --retain wiki:not-biology (API: retain=[...more documents])"
    )


def test_repeated_retain_mixes_sources_and_enough_text_calibrates_without_warning(workspace, cli, fit_args):
    from saeguard.testing import RETAIN_WORDS, corpus

    (workspace / "more.txt").write_text("\n\n".join(corpus(RETAIN_WORDS, 60, 40, 7)))
    code, out, err = cli(fit_args(workspace / "guard", "--retain", str(workspace / "more.txt")))
    assert code == 0 and "retain: 84 documents" in out
    assert "WARNING" not in err

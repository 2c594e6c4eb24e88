"""Shared options and checks: device, the default SAE, output paths, sequence lengths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from saeguard.cli.options import check_output, check_replace, fit_length, resolve_device, resolve_sae
from saeguard.config import FitConfig
from saeguard.errors import SaeguardError
from saeguard.testing import tiny_gpt2


def test_auto_device_is_cuda_when_available_else_cpu():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


def test_unknown_device_is_a_one_line_error():
    with pytest.raises(SaeguardError, match="unknown --device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_a_gpu_says_to_use_cpu():
    with pytest.raises(SaeguardError, match="no CUDA GPU here; use --device cpu"):
        resolve_device("cuda")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SAEGUARD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_default_sae_means_the_shipped_folder(cache):
    from saeguard.defaults import SHIPPED_SAE, default_sae_dir

    assert default_sae_dir().is_relative_to(SHIPPED_SAE)
    assert resolve_sae(None, "default") == resolve_sae("default", "default") == str(default_sae_dir())


def test_default_sae_falls_back_to_the_cached_folder_when_none_ships(cache, monkeypatch, tmp_path):
    import saeguard.defaults as defaults

    monkeypatch.setattr(defaults, "SHIPPED_SAE", tmp_path / "nothing-shipped")
    folder = defaults.default_sae_dir()
    assert folder.is_relative_to(cache)
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text("{}")
    assert resolve_sae(None, "default") == resolve_sae("default", "default") == str(folder)
    assert resolve_sae("saes/mine", "default") == "saes/mine"
    assert resolve_sae("saes/mine", "gpt2") == "saes/mine"


def test_default_sae_with_another_model_asks_for_sae(cache):
    with pytest.raises(SaeguardError, match="no default SAE for model 'gpt2': pass --sae"):
        resolve_sae(None, "gpt2")


def test_output_that_is_a_file_or_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SaeguardError, match="is a file: give a folder path"):
        check_output(tmp_path / "file", folder=True)
    with pytest.raises(SaeguardError, match=r"file is a file; choose another path"):
        check_output(tmp_path / "file" / "deeper" / "guard", folder=True)
    with pytest.raises(SaeguardError, match="is a folder: give a file path"):
        check_output(tmp_path, folder=False)
    assert check_output(tmp_path / "new" / "guard", folder=True) == tmp_path / "new" / "guard"
    assert not (tmp_path / "new").exists()  # the check creates nothing
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder no new entry can be made in: chmod 555, or /proc/self when root ignores modes."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if not os.access(locked, os.W_OK):
            yield locked
        elif sys.platform.startswith("linux"):
            yield Path("/proc/self")
        else:
            pytest.skip("no unwritable folder available to this user")
    finally:
        locked.chmod(0o755)


def test_unwritable_output_folder_is_refused(unwritable):
    with pytest.raises(SaeguardError, match="is not writable"):
        check_output(unwritable / "guard", folder=True)


def test_replacing_a_guardrail_needs_force_and_other_content_is_never_replaced(tmp_path):
    ours = tmp_path / "guard"
    ours.mkdir()
    (ours / "guardrail.json").write_text("{}")
    is_ours = lambda path: (path / "guardrail.json").is_file()  # noqa: E731
    with pytest.raises(SaeguardError, match="already holds a guardrail: pass --force"):
        check_replace(ours, force=False, is_ours=is_ours, what="guardrail")
    check_replace(ours, force=True, is_ours=is_ours, what="guardrail")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SaeguardError, match="does not hold a guardrail"):
        check_replace(tmp_path / "other", force=True, is_ours=is_ours, what="guardrail")
    (tmp_path / "empty").mkdir()
    check_replace(tmp_path / "empty", force=False, is_ours=is_ours, what="guardrail")


def test_default_seq_len_is_lowered_to_the_model_positions_and_an_explicit_one_is_refused(capsys):
    model = tiny_gpt2(max_positions=256)
    lowered = fit_length(FitConfig(), model, given=())
    assert lowered.seq_len == 256 and "seq_len 1024 -> 256 (256 positions)" in capsys.readouterr().err
    assert fit_length(FitConfig(seq_len=128), model, given={"seq_len"}).seq_len == 128
    with pytest.raises(SaeguardError, match="--seq-len 1024 is longer than the model's 256 positions"):
        fit_length(FitConfig(), model, given={"seq_len"})

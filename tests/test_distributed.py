"""Data-parallel fitting: shards, launch detection, and 2 gloo processes fitting the single-process guard."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from saeguard.cli import main
from saeguard.config import FitConfig
from saeguard.core.fit import FitInputs, calibration_rho, corpus_statistics, fit_from_statistics, prepare_fit
from saeguard.core.sae import SelectedLatents
from saeguard.core.statistics import FeatureStatistics, Shard
from saeguard.distributed import Launch, torchrun_launch
from saeguard.errors import SaeguardError
from saeguard.testing import (
    FORGET_WORDS,
    RETAIN_WORDS,
    corpus,
    make_tokenizer,
    plant_forget_direction,
    random_sae,
    tiny_llama,
)


@pytest.mark.parametrize(("total", "step", "count"), [(25, 2, 2), (24, 8, 3), (5, 4, 3), (0, 8, 2)])
def test_shard_spans_are_batch_aligned_blocks_that_cover_the_inputs_in_order(total, step, count):
    spans = [Shard(rank, count).span(total, step) for rank in range(count)]
    covered = [i for start, stop in spans for i in range(start, stop)]
    assert covered == list(range(total))
    assert all(start % step == 0 for start, stop in spans if stop > start)


def test_shard_take_deals_batches_round_robin():
    batches = list(range(7))
    assert [list(Shard(rank, 3).take(batches)) for rank in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]


def test_shard_rank_outside_the_world_is_a_one_line_error():
    with pytest.raises(SaeguardError, match="shard rank 2 is outside 0..1"):
        Shard(2, 2)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WORLD_SIZE": "1", "RANK": "0"}, None),
        ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, Launch(1, 2, 1)),
        ({"WORLD_SIZE": "4", "RANK": "3"}, Launch(3, 4, 3)),
    ],
)
def test_torchrun_launch_reads_the_launcher_variables(environ, expected):
    assert torchrun_launch(environ) == expected


@pytest.mark.parametrize("environ", [{"WORLD_SIZE": "two"}, {"WORLD_SIZE": "2", "RANK": "2"}])
def test_bad_launcher_variables_are_a_one_line_error(environ):
    with pytest.raises(SaeguardError, match="torchrun or accelerate launch"):
        torchrun_launch(environ)


@pytest.fixture
def planted() -> tuple[torch.nn.Module, Any]:
    return plant_forget_direction(tiny_llama(max_positions=256), random_sae("jumprelu"))


def _inputs(planted, tokenizer, forget_corpus, retain_corpus, config: FitConfig) -> FitInputs:
    model, sae = planted
    return prepare_fit(model, tokenizer, sae, forget_corpus, retain_corpus, config)


def test_shard_statistics_sum_to_the_single_process_statistics(
    planted, tokenizer, forget_corpus, retain_corpus
):
    config = FitConfig(layer=1, seq_len=32, batch_size=3)
    inputs = _inputs(planted, tokenizer, forget_corpus, retain_corpus, config)
    whole = corpus_statistics(inputs, "retain", config, show_progress=False)
    parts = [
        corpus_statistics(inputs, "retain", config, show_progress=False, shard=Shard(rank, 3))
        for rank in range(3)
    ]
    assert whole.sequence_count == 32 and [p.sequence_count for p in parts] == [12, 11, 9]
    assert sum(p.token_count for p in parts) == whole.token_count
    for name in ("activation_sum", "squared_sum", "nonzero_count"):
        summed = sum(getattr(p, name) for p in parts)
        assert torch.allclose(summed, getattr(whole, name), rtol=1e-12, atol=0), name


def test_a_shard_without_batches_gives_empty_statistics_not_an_error(
    planted, tokenizer, forget_corpus, retain_corpus
):
    config = FitConfig(layer=1, seq_len=32, batch_size=64)  # one batch: rank 1 of 2 runs nothing
    inputs = _inputs(planted, tokenizer, forget_corpus, retain_corpus, config)
    empty = corpus_statistics(inputs, "forget", config, show_progress=False, shard=Shard(1, 2))
    assert (empty.token_count, empty.sequence_count) == (0, 0)
    assert empty.activation_sum.equal(FeatureStatistics.empty(64).activation_sum)


@pytest.mark.parametrize("calibration", ["prompts", "chunks"])
def test_shard_rho_blocks_in_rank_order_are_the_single_process_rho(
    calibration, planted, tokenizer, forget_corpus, retain_corpus
):
    config = FitConfig(layer=1, seq_len=32, batch_size=5, calibration=calibration, calibration_long_tokens=48)
    inputs = _inputs(planted, tokenizer, forget_corpus, retain_corpus, config)
    latents = SelectedLatents.from_sae(inputs.sae, [37, 4, 9])
    whole = calibration_rho(inputs, latents, "retain", config, show_progress=False)
    blocks = [
        calibration_rho(inputs, latents, "retain", config, show_progress=False, shard=Shard(rank, 2))
        for rank in range(2)
    ]
    assert whole.numel() == {"prompts": 92, "chunks": 32}[calibration]  # prompts: short, long, multi-turn
    assert blocks[0].numel() > 0 and blocks[1].numel() > 0
    assert torch.cat(blocks).equal(whole)  # same inputs, same batches: bit for bit


def test_a_sharded_fit_without_gather_rho_is_refused(planted, tokenizer, forget_corpus, retain_corpus):
    config = FitConfig(layer=1, seq_len=32)
    inputs = _inputs(planted, tokenizer, forget_corpus, retain_corpus, config)
    stats = corpus_statistics(inputs, "forget", config, show_progress=False)
    with pytest.raises(SaeguardError, match="needs gather_rho"):
        fit_from_statistics(inputs, stats, stats, config, show_progress=False, shard=Shard(0, 2))


@pytest.fixture
def workspace(tmp_path: Path, planted) -> Path:
    """A tiny Llama and tokenizer (model/), a JumpReLU SAE (sae/) and forget/retain text on disk."""
    model, sae = planted
    model.save_pretrained(tmp_path / "model")
    make_tokenizer().save_pretrained(tmp_path / "model")
    sae.save_model(tmp_path / "sae")
    (tmp_path / "forget.txt").write_text("\n\n".join(corpus(FORGET_WORDS, 25, 40, 1)))
    (tmp_path / "retain.txt").write_text("\n\n".join(corpus(RETAIN_WORDS, 53, 20, 2)))
    return tmp_path


def _fit_args(ws: Path, output: Path) -> list[str]:
    return [
        "fit",
        *("--model", str(ws / "model"), "--sae", str(ws / "sae"), "--output", str(output)),
        *("--forget", str(ws / "forget.txt"), "--retain", str(ws / "retain.txt")),
        *("--layer", "1", "-n", "3", "--ratio-percentile", "80", "--seq-len", "32"),
        *("--gate-statistic", "activation", "--batch-size", "3", "--device", "cpu"),
    ]


def _without_fit_seconds(meta: dict[str, Any]) -> dict[str, Any]:
    meta["provenance"].pop("fit_seconds")
    return meta


def _assert_same_json(got: Any, expected: Any, where: str = "guardrail.json") -> None:
    """Equal JSON; floats to 1e-12 relative (per-rank float64 sums are added in another order)."""
    if isinstance(expected, float) and isinstance(got, float):
        assert math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-15), f"{where}: {got} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key in expected:
            _assert_same_json(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected, strict=True)):
            _assert_same_json(a, b, f"{where}[{index}]")
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def test_two_gloo_processes_fit_the_same_guard_as_one(workspace, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["saeguard", *_fit_args(workspace, workspace / "one")])
    main()  # one process, in this one
    assert "guardrail written to" in capsys.readouterr().out

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env = {k: v for k, v in env.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*launcher, "-m", "saeguard", *_fit_args(workspace, workspace / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("guardrail written to") == 1  # rank 0 prints, rank 1 is silent

    one = _without_fit_seconds(json.loads((workspace / "one" / "guardrail.json").read_text()))
    two = _without_fit_seconds(json.loads((workspace / "two" / "guardrail.json").read_text()))
    assert two["provenance"]["selection"]["latent_ids"] == one["provenance"]["selection"]["latent_ids"]
    assert abs(two["tau"] - one["tau"]) <= 1e-9
    assert two["provenance"]["corpora"] == one["provenance"]["corpora"]  # every token counted once
    _assert_same_json(two, one)
    tensors_one = load_file(str(workspace / "one" / "guardrail.safetensors"))
    tensors_two = load_file(str(workspace / "two" / "guardrail.safetensors"))
    assert tensors_two.keys() == tensors_one.keys()
    assert tensors_one["distribution.retain_rho"].numel() == 53  # one calibration input per document
    for name, tensor in tensors_one.items():  # the latents are copies; rho is computed on the same batches
        assert torch.allclose(tensors_two[name], tensor, rtol=1e-12, atol=0), name
    assert sorted(p.name for p in (workspace / "two").iterdir()) == [
        "guardrail.json",
        "guardrail.safetensors",
    ]

"""Sweeps: one statistics pass, resumable, refuses a file from another setup."""

from __future__ import annotations

import json

import pytest

from saeguard.core import fit_inputs
from saeguard.core.fit import FitConfig
from saeguard.errors import SaeguardError
from saeguard.eval.mcq import McqConfig
from saeguard.runs.sweep import SweepConfig, SweepGrid, read_records, run_sweep
from saeguard.testing import FORGET_WORDS, RETAIN_WORDS, corpus, make_items, random_sae


def _config(**grid):
    axes = {"ratio_percentile": [50.0], "n_features": [2, 4], "clamp": [100, "5x"], "gate_percentile": [50.0]}
    return SweepConfig(
        grid=SweepGrid(**(axes | grid)),
        fit=FitConfig(layer=0, seq_len=32, batch_size=4, calibration_size=16),
        mcq=McqConfig(scorer="cloze", batch_size=8),
        known=False,
    )


def _run(llama, tok, tmp_path, config, **kwargs):
    items = make_items(8)
    return run_sweep(
        llama,
        tok,
        random_sae("standard"),
        forget=corpus(FORGET_WORDS, 8, 40, seed=1),
        retain=corpus(RETAIN_WORDS, 8, 40, seed=2),
        forget_mcq={"bio": items[0::2]},
        utility_mcq={"history": items[1::2]},
        output=tmp_path / "sweep.jsonl",
        config=config,
        cache_dir=tmp_path / "cache",
        show_progress=False,
        **kwargs,
    )


def test_sweep_records_every_point_and_resumes(llama, tok, tmp_path, monkeypatch):
    calls = []
    original = fit_inputs.collect_statistics
    monkeypatch.setattr(
        fit_inputs, "collect_statistics", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    first = _run(llama, tok, tmp_path, _config(), heldout={"near": corpus(RETAIN_WORDS, 3, 30, seed=5)})
    assert (first.computed, first.skipped) == (4, 0)
    assert len(calls) == 2  # one statistics pass per corpus for the whole grid
    records = read_records(tmp_path / "sweep.jsonl")
    assert [r.key for r in records][0] == "base" and len(records) == 5
    point = records[1]
    assert point.point is not None and point.forget["bio"].n_items == 4
    assert 0.0 <= point.forget_accuracy <= 1.0 and set(point.firing) == {"near"}
    assert first.score is not None and first.score.total == 4

    # interrupted run: the last record is torn; a grown grid only computes the new points
    text = (tmp_path / "sweep.jsonl").read_text().splitlines()
    (tmp_path / "sweep.jsonl").write_text("\n".join(text[:-1]) + "\n" + text[-1][:40])
    again = _run(
        llama,
        tok,
        tmp_path,
        _config(gate_percentile=[50.0, 90.0]),
        heldout={"near": corpus(RETAIN_WORDS, 3, 30, seed=5)},
    )
    assert (again.computed, again.skipped) == (5, 3)
    assert len(calls) == 2  # statistics came from the on-disk cache
    keys = [r.key for r in read_records(tmp_path / "sweep.jsonl")]
    assert len(keys) == len(set(keys)) == 9
    for line in (tmp_path / "sweep.jsonl").read_text().splitlines():
        assert json.loads(line)["kind"] == "saeguard-sweep-record"


def test_sweep_refuses_a_file_from_another_setup(llama, tok, tmp_path):
    _run(llama, tok, tmp_path, _config(n_features=[2], clamp=[100]))
    other = _config(n_features=[2], clamp=[100])
    other.mcq = McqConfig(scorer="letter")
    with pytest.raises(SaeguardError, match="another setup"):
        _run(llama, tok, tmp_path, other)


def test_impossible_point_is_recorded_not_fatal(llama, tok, tmp_path):
    result = _run(llama, tok, tmp_path, _config(n_features=[10_000], clamp=[100]))
    errors = [r for r in result.records if r.error]
    assert len(errors) == 1 and "n_features" in errors[0].error
    assert result.score is None

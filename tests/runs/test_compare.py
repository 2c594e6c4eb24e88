"""The comparison: every method on one harness, one statistics pass, resumable, refuses other setups."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saeguard.core import fit, fit_inputs
from saeguard.errors import SaeguardError
from saeguard.hf.fingerprint import model_identity
from saeguard.io import to_jsonable
from saeguard.runs import compare
from saeguard.runs.compare import METHODS, CompareConfig, CompareResult, read_compare_records
from saeguard.runs.compare_types import compare_fit
from saeguard.testing import random_sae


def _run(llama, tok, tmp_path, config, sae=0):
    return compare.run_compare(
        llama,
        tok,
        random_sae("standard", seed=sae) if sae is not None else None,
        config,
        tmp_path / "out",
        cache_dir=tmp_path / "cache",
        show_progress=False,
    )


def test_compare_runs_every_method_and_resumes(llama, tok, tmp_path, compare_config, monkeypatch):
    calls = []
    original = fit_inputs.collect_statistics
    monkeypatch.setattr(
        fit_inputs, "collect_statistics", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    before = model_identity(llama)["fingerprint"]
    # gradient methods need no SAE: they can run first, the SAE methods join the folder later
    first = _run(
        llama, tok, tmp_path, replace(compare_config, methods=["ga", "graddiff", "npo", "rmu"]), None
    )
    assert (first.computed, first.skipped) == (4, 0) and not calls
    result = _run(llama, tok, tmp_path, compare_config)

    assert model_identity(llama)["fingerprint"] == before  # gradient methods trained a copy
    assert len(calls) == 2  # one statistics pass per corpus serves every SAE configuration
    assert (result.computed, result.skipped) == (4, 4)
    assert {r.method for r in result.records} == set(METHODS)
    for record in result.records:
        assert record.error is None, record.error
        assert 0.0 <= record.forget_accuracy <= 1.0 and 0.0 <= record.utility_accuracy <= 1.0
        assert record.forget_perplexity > 1.0 and record.retain_perplexity > 1.0 and record.peak_rss_mb > 0
    gated = [r for r in result.records if r.method == "dsg"]
    assert gated[0].guard["latent_ids"] == gated[1].guard["latent_ids"]  # one fit, two taus
    assert {r.guard["gate"] for r in result.records if r.method in ("static", "ungated")} == {"always"}
    for record in result.records:
        if record.method in ("ga", "graddiff", "npo", "rmu"):
            assert (tmp_path / "out" / "models").is_dir() and record.setup_seconds > 0
            assert json.loads((Path(record.artifact) / "unlearning.json").read_text())["method"]
    assert [s.method for s in result.summaries] == list(METHODS)
    assert all(s.key is not None for s in result.summaries)

    out = tmp_path / "out"
    for name in ("compare.json", "compare.png", "compare.md", "index.html", "records.jsonl"):
        assert (out / name).is_file(), name
    loaded = CompareResult.load(out / "compare.json")
    assert loaded.kind == "saeguard-compare" and loaded.config == compare_config
    assert len(loaded.records) == 8 and loaded.base.method == "base"
    table = (out / "compare.md").read_text()
    assert "Best per method" in table and "dsg:n_features=2,clamp=5x" in table

    # rerun: nothing is retrained or refitted
    def refuse(*_a, **_k):
        raise AssertionError("a finished configuration was recomputed")

    monkeypatch.setattr(compare, "unlearn", refuse)
    monkeypatch.setattr(compare, "fit_from_statistics", refuse)
    again = _run(llama, tok, tmp_path, compare_config)
    assert (again.computed, again.skipped) == (0, 8)

    # a crash after RMU's model was saved but before its record, then a torn write of the last record:
    # RMU is measured again from its saved model (not retrained), the torn configuration is redone
    path = out / "records.jsonl"
    lines = [line for line in path.read_text().splitlines() if '"method": "rmu"' not in line]
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:30])
    monkeypatch.setattr(compare, "fit_from_statistics", fit.fit_from_statistics)
    third = _run(llama, tok, tmp_path, compare_config)
    assert (third.computed, third.skipped) == (2, 6)
    keys = [r.key for r in read_compare_records(path)]
    assert len(keys) == len(set(keys)) == 9

    # a different setup is refused rather than mixed in
    with pytest.raises(SaeguardError, match="another setup"):
        _run(llama, tok, tmp_path, replace(compare_config, fit=replace(compare_config.fit, seq_len=24)))
    with pytest.raises(SaeguardError, match="another SAE"):
        _run(llama, tok, tmp_path, compare_config, sae=1)


def test_config_round_trips_and_rejects_unknown_methods():
    config = CompareConfig.quick()
    assert CompareConfig.from_dict(json.loads(json.dumps(to_jsonable(config)))) == config
    with pytest.raises(SaeguardError, match="unknown methods"):
        replace(config, methods=["dsg", "scrub"]).validate()
    with pytest.raises(SaeguardError, match="unknown compare settings"):
        CompareConfig.from_dict({"grid": {}})


def test_cli_registers_compare():
    import typer

    from saeguard.cli import compare_commands

    app = typer.Typer()
    compare_commands.register(app)
    app.command("noop")(lambda: None)  # typer runs a lone command without its name
    result = CliRunner().invoke(app, ["compare", "--help"])
    assert result.exit_code == 0 and "--quick" in result.output and "--sae" in result.output


def test_gate_statistic_is_a_dsg_axis_only_when_swept():
    from saeguard.runs.compare_types import GuardGrid

    paper = GuardGrid(n_features=[10], clamp=["5x"], gate_percentile=[95])
    assert [set(p) for p in paper.points("dsg")] == [
        {"n_features", "clamp", "ratio_percentile", "gate_percentile"}
    ]
    both = replace(paper, gate_statistic=["fraction", "activation"])
    assert [p["gate_statistic"] for p in both.points("dsg")] == ["fraction", "activation"]
    assert all("gate_statistic" not in p for p in both.points("ungated"))
    scoped = replace(paper, clamp_scope=["fired", "input"])
    assert [p["clamp_scope"] for p in scoped.points("dsg")] == ["fired", "input"]


def test_config_contains_a_fit_and_reads_the_flat_settings_of_earlier_versions():
    flat = {"layer": 3, "seq_len": 128, "max_chunks": 32, "batch_size": 4, "calibration_size": 64, "seed": 7}
    config = CompareConfig.from_dict({"mcq_limit": 25} | flat)
    assert config.fit == compare_fit(
        layer=3,
        seq_len=128,
        max_forget_chunks=32,
        max_retain_chunks=32,
        batch_size=4,
        calibration_size=64,
        seed=7,
    )
    assert (
        config.mcq_limit == 25 and config.text_config().seq_len == 128 and config.mcq_config().batch_size == 4
    )
    # compare.json now: the fit nested, its clamp an object; a partial fit keeps the compare defaults
    assert CompareConfig.from_dict(json.loads(json.dumps(to_jsonable(config)))) == config
    partial = CompareConfig.from_dict({"fit": {"seq_len": 128}})
    assert partial.fit == compare_fit(seq_len=128) and partial.fit.max_forget_chunks == 64
    with pytest.raises(SaeguardError, match="belong inside 'fit'"):
        CompareConfig.from_dict({"fit": {}, "seq_len": 128})
    with pytest.raises(SaeguardError, match="unknown fit settings"):
        CompareConfig.from_dict({"fit": {"seq_length": 128}})


def test_context_settings_keep_the_flat_form_so_earlier_run_folders_resume():
    # what saeguard 0.1 fingerprinted for the default settings (asdict of the flat CompareConfig)
    assert CompareConfig().context_settings() == {
        "forget": ["wiki:biology"],
        "retain": ["wiki:not-biology", "austen"],
        "forget_mcq": ["wiki:biology"],
        "utility_mcq": ["wiki:geography", "wiki:history", "wiki:arts"],
        "mcq_limit": 80,
        "mcq_limits": {},
        "layer": None,
        "seq_len": 256,
        "max_chunks": 64,
        "eval_chunks": 16,
        "batch_size": 8,
        "calibration_size": 256,
        "scorer": "cloze",
        "known_filter": True,
        "known_permutations": "all",
        "seed": 0,
    }
    # fit settings the flat form could not hold still change the fingerprint; those a point sets do not
    changed = CompareConfig(fit=compare_fit(importance="mean_square", max_retain_chunks=8, n_features=5))
    settings = changed.context_settings()
    assert "max_chunks" not in settings
    assert settings["fit"] == {"importance": "mean_square", "max_forget_chunks": 64, "max_retain_chunks": 8}

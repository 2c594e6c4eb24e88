"""MUSE Books end to end on a tiny model: every method measured on the same data, the original untouched."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from saeguard.baselines import TrainConfig
from saeguard.config import FitConfig
from saeguard.errors import CalibrationWarning, SaeguardError
from saeguard.eval.muse import MuseConfig
from saeguard.eval.muse_data import MuseSizes, books_corpora
from saeguard.runs.muse_books import BooksConfig, books_config, run_books
from saeguard.testing import random_sae, text_tokenizer, tiny_llama


def test_books_runs_original_dsg_and_a_gradient_method_on_the_same_data(tmp_path):
    corpora = books_corpora("persuasion")
    tokenizer = text_tokenizer([doc for docs in corpora.values() for doc in docs])
    model = tiny_llama(vocab_size=len(tokenizer.get_vocab()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sizes = MuseSizes(prefix_tokens=8, continuation_tokens=8, verbmem_samples=3, knowmem_questions=3)
    sizes.privleak_samples = 6
    config = BooksConfig(
        book="persuasion",
        methods=("dsg", "ga"),
        muse=MuseConfig(sizes=sizes, answer_tokens=2, privleak_tokens=24),
        fit=FitConfig(layer=1, n_features=2, seq_len=32, max_forget_chunks=16, max_retain_chunks=16),
        train=TrainConfig(steps=2, batch_size=2, seq_len=16, device="cpu"),
        retain_documents=200,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # tiny corpora: tau is not trustworthy here
        result = run_books(
            model, tokenizer, config, sae=random_sae("standard"), output=tmp_path, log=lambda _: None
        )
    assert [row.method for row in result.rows] == ["original", "dsg", "ga"]
    for name, value in model.state_dict().items():  # GA trained a copy
        torch.testing.assert_close(value, before[name])
    original = result.rows[0].metrics
    assert original.verbmem_samples == 3 and original.privleak_samples == 6 and original.privleak is None
    assert original.knowmem_forget.choice_questions == 3 and 0 <= original.knowmem_forget.choice_accuracy <= 1
    assert result.rows[1].settings["n_features"] == 2  # the fitted guard's summary
    saved = json.loads((tmp_path / "muse.json").read_text())
    assert [row["method"] for row in saved["rows"]] == ["original", "dsg", "ga"]
    page = (tmp_path / "index.html").read_text()
    assert "<h2>The Books table</h2>" in page and page.count("<tr>") == 4  # header + 3 methods


def test_books_config_refuses_unknown_novels_and_tiny_limits():
    assert books_config("austen:emma", 10).muse.sizes.knowmem_questions == 10
    with pytest.raises(SaeguardError, match="unknown Austen novel"):
        books_config("hamlet")
    with pytest.raises(SaeguardError, match="at least 2"):
        books_config("emma", 1)


def test_eval_muse_with_an_unknown_novel_is_one_line_before_any_model_loads(monkeypatch, capsys, tmp_path):
    import sys

    from saeguard.cli import main

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr("saeguard.cli.eval_commands.load_cli_model", no_model)
    monkeypatch.setattr(
        sys, "argv", ["saeguard", "eval", "--muse", "hamlet", "--output", str(tmp_path / "m")]
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert (
        exit_.value.code == 2
        and err.startswith("error: unknown Austen novel 'hamlet'")
        and err.count("\n") == 1
    )


def test_rmu_trains_at_its_tuned_point_and_the_other_methods_at_the_shared_one():
    from saeguard.baselines import DEFAULT_MODEL_RMU
    from saeguard.runs.muse_books import gradient_config

    config = books_config("persuasion")
    rmu, ga = gradient_config(config, "rmu"), gradient_config(config, "ga")
    assert (
        (rmu.train.learning_rate, rmu.train.steps)
        == (5e-4, 150)
        == (
            DEFAULT_MODEL_RMU["learning_rate"],
            DEFAULT_MODEL_RMU["steps"],
        )
    )
    assert (rmu.layer, rmu.steering_coeff, rmu.alpha) == (3, 100, 100)
    assert (
        (ga.train.learning_rate, ga.train.steps)
        == (config.train.learning_rate, config.train.steps)
        == (5e-5, 40)
    )

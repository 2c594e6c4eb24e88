"""Fitting: statistics, selection and calibration, and the errors users hit."""

from __future__ import annotations

import math

import pytest
import torch

from saeguard import Guardrail, SaeguardError
from saeguard.core.selection import select_features
from saeguard.core.statistics import FeatureStatistics, collect_statistics, token_batches
from saeguard.hf.corpus import iter_chunks
from saeguard.testing import (
    PLANTED_LATENT,
    plant_forget_direction,
    random_sae,
    tiny_gpt2,
    tiny_llama,
)

FIT = dict(layer=1, n_features=2, ratio_percentile=90, seq_len=32, show_progress=False)


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gpt2])
def test_fit_selects_planted_forget_latent_first(
    make_model, architecture, tokenizer, forget_corpus, retain_corpus
):
    model, sae = plant_forget_direction(make_model(), random_sae(architecture))
    guard = Guardrail.fit(model, tokenizer, sae, forget=forget_corpus, retain=retain_corpus, **FIT)
    assert int(guard.latents.ids[0]) == PLANTED_LATENT
    calibration = guard.provenance.calibration
    assert calibration["forget"].flagged_fraction > calibration["retain"].flagged_fraction


def test_statistics_exclude_special_tokens_by_id_not_position(tokenizer):
    model, sae = tiny_llama(), random_sae("standard")
    docs = ["cell virus gene", "king river"]
    chunks = list(iter_chunks(docs, tokenizer, 32))
    stats = collect_statistics(model, sae, 1, token_batches(chunks, tokenizer, 4), show_progress=False)
    real_tokens = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs)
    assert stats.token_count == real_tokens


def test_statistics_are_batch_size_invariant(tokenizer, forget_corpus):
    model, sae = tiny_llama(), random_sae("jumprelu")
    chunks = list(iter_chunks(forget_corpus, tokenizer, 24))
    one = collect_statistics(model, sae, 1, token_batches(chunks, tokenizer, 1), show_progress=False)
    many = collect_statistics(model, sae, 1, token_batches(chunks, tokenizer, 7), show_progress=False)
    assert one.token_count == many.token_count
    torch.testing.assert_close(one.mean, many.mean, rtol=1e-5, atol=1e-7)


def _stats(means: list[float], tokens: int = 10) -> FeatureStatistics:
    stats = FeatureStatistics.empty(len(means))
    stats.activation_sum = torch.tensor(means, dtype=torch.float64) * tokens
    stats.squared_sum = stats.activation_sum.square() / tokens
    stats.nonzero_count = torch.full((len(means),), float(tokens), dtype=torch.float64)
    stats.token_count = tokens
    return stats


def test_selection_uses_ratio_percentile_then_forget_importance_with_stable_ties():
    forget = _stats([1.0, 2.0, 2.0, 0.5, 3.0])
    retain = _stats([0.0, 0.1, 0.1, 0.0, 10.0])
    selection = select_features(forget, retain, n_features=2, ratio_percentile=40)
    # latent 4 is popular on retain (low ratio): excluded; 1 and 2 tie, lower index first
    assert selection.latent_ids == [1, 2]
    assert math.isclose(selection.ratio[0], 4.0 / (0.01 + 1e-21))


def test_mean_of_squares_importance_is_an_option():
    forget, retain = _stats([1.0, 2.0]), _stats([1.0, 1.0])
    forget.squared_sum = torch.tensor([100.0, 1.0], dtype=torch.float64)
    chosen = select_features(forget, retain, n_features=1, ratio_percentile=0, importance_kind="mean_square")
    assert chosen.latent_ids == [0]


def test_relative_clamp_scales_with_mean_forget_activation(tokenizer, forget_corpus, retain_corpus):
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    guard = Guardrail.fit(
        model,
        tokenizer,
        sae,
        forget=forget_corpus,
        retain=retain_corpus,
        clamp="10x",
        **FIT,
    )
    mean_active = sum(guard.provenance.selection.forget_mean_nonzero) / 2
    assert math.isclose(guard.clamp_value, 10.0 * mean_active, rel_tol=1e-9)


def test_prompt_calibration_counts_user_tokens_only(tokenizer, forget_corpus, retain_corpus):
    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    prompts = Guardrail.fit(model, tokenizer, sae, forget=forget_corpus, retain=retain_corpus, **FIT)
    chunks = Guardrail.fit(
        model, tokenizer, sae, forget=forget_corpus, retain=retain_corpus, calibration="chunks", **FIT
    )
    assert prompts.provenance.calibration["retain"].count == 24
    assert chunks.provenance.calibration["retain"].count == chunks.provenance.corpora["retain"].chunks


BAD_INPUTS = [
    ({"forget": []}, "forget corpus is empty"),
    ({"retain": ["  "]}, "retain corpus is empty"),
    ({"forget": ["cell"] * 1, "retain": ["king"]}, "at least 2 tokens"),
    ({"layer": 7}, "out of range"),
    ({"n_features": 60}, "larger than the"),
    ({"ratio_percentile": 120}, "ratio_percentile must be a percentile"),
    ({"gate_percentile": -1}, "gate_percentile must be a percentile"),
    ({"clamp": 0.0}, "clamp must be a positive"),
    ({"clamp": -5.0}, "clamp must be a positive"),
    ({"forget": "/nonexistent/corpus.txt"}, "cannot be read"),
]


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS)
def test_bad_fit_input_gives_one_line_error(change, message, tokenizer, forget_corpus, retain_corpus):
    model, sae = tiny_llama(), random_sae("jumprelu")
    args = dict(forget=forget_corpus, retain=retain_corpus) | FIT | change
    with pytest.raises(SaeguardError, match=message) as error:
        Guardrail.fit(model, tokenizer, sae, **args)
    assert "\n" not in str(error.value)


def test_sae_width_mismatch_is_reported(tokenizer, forget_corpus, retain_corpus):
    with pytest.raises(SaeguardError, match="SAE width mismatch"):
        Guardrail.fit(
            tiny_llama(),
            tokenizer,
            random_sae("jumprelu", d_in=48),
            forget=forget_corpus,
            retain=retain_corpus,
            **FIT,
        )


def test_nan_activations_are_reported(tokenizer, forget_corpus, retain_corpus):
    model = tiny_llama()
    with torch.no_grad():
        model.get_input_embeddings().weight[10:20] = float("nan")
    with pytest.raises(SaeguardError, match="non-finite"):
        Guardrail.fit(
            model, tokenizer, random_sae("jumprelu"), forget=forget_corpus, retain=retain_corpus, **FIT
        )


def test_static_and_ungated_clamps_differ_from_dsg_only_by_the_gate(tokenizer, forget_corpus, retain_corpus):
    from saeguard.hf.corpus import pad_batch

    model, sae = plant_forget_direction(tiny_llama(), random_sae("jumprelu"))
    dsg = Guardrail.fit(model, tokenizer, sae, forget=forget_corpus, retain=retain_corpus, **FIT)
    ungated = Guardrail.fit(
        model, tokenizer, sae, forget=forget_corpus, retain=retain_corpus, gate="always", **FIT
    )
    static = Guardrail.fit(
        model,
        tokenizer,
        sae,
        forget=forget_corpus,
        retain=retain_corpus,
        selection="frequency",
        retain_frequency_threshold=0.05,
        gate="always",
        **FIT,
    )
    assert ungated.latents.ids.tolist() == dsg.latents.ids.tolist()
    assert int(static.latents.ids[0]) == PLANTED_LATENT
    prompts = [
        "what is the cell virus gene protein",
        "the king of the city",
        "the king of the city and a river and a mountain castle by the ocean and a cell",
    ]
    ids, mask = pad_batch([tokenizer(p)["input_ids"] for p in prompts], 0)
    records = {}
    for name, guard in {"dsg": dsg, "ungated": ungated}.items():
        with guard.attached(model) as hook:
            hook.recording = True
            logits = model(input_ids=ids, attention_mask=mask).logits
            records[name] = (hook.records[-1], logits)
    dsg_record, dsg_logits = records["dsg"]
    ungated_record, ungated_logits = records["ungated"]
    on = dsg_record.flagged
    assert on.any() and not on.all()
    # where DSG's gate is on, both clamp the same tokens and give the same outputs
    assert torch.equal(dsg_record.clamped[on], ungated_record.clamped[on])
    torch.testing.assert_close(dsg_logits[on], ungated_logits[on])
    # the ungated clamp also edits inputs the gate let through
    assert ungated_record.clamped[~on].any()


def test_memory_budget_sizes_statistics_batches_automatically(tokenizer, forget_corpus, retain_corpus):
    from saeguard.core.fit import FitConfig, prepare_fit, statistics_batch_size

    model, sae = tiny_llama(), random_sae("jumprelu")
    small = FitConfig(layer=1, seq_len=32, memory_budget_gb=0.04)
    large = FitConfig(layer=1, seq_len=32, memory_budget_gb=1.0)
    inputs = prepare_fit(model, tokenizer, sae, forget_corpus, retain_corpus, small)
    assert 1 <= statistics_batch_size(inputs, small) < statistics_batch_size(inputs, large)
    guard = Guardrail.fit(
        model, tokenizer, sae, forget=forget_corpus, retain=retain_corpus, memory_budget_gb=0.5, **FIT
    )
    assert guard.provenance.corpora["forget"].tokens > 0

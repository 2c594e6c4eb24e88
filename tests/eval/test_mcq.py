"""Letter and cloze scorers against a direct computation; one gate decision per question."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from saeguard.core.gate import token_scope
from saeguard.eval.items import LETTERS, option_ids, question_text, shared_prompt
from saeguard.eval.mcq import McqConfig, evaluate_mcq, gate_decisions, score_items
from saeguard.testing import make_guard, make_items


def _chat(tok, item, prefix):
    text = tok.apply_chat_template(
        [{"role": "user", "content": question_text(item)}], tokenize=False, add_generation_prompt=True
    )
    return text + prefix


@torch.no_grad()
def _logprobs(model, tok, text):
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    return torch.log_softmax(model(input_ids=ids).logits[0].float(), -1), ids[0]


def test_letter_scorer_matches_direct_computation(llama, tok):
    items = make_items(5)
    preds = score_items(llama, tok, items, McqConfig(scorer="letter", batch_size=3))
    for item, pred in zip(items, preds, strict=True):
        log_probs, _ = _logprobs(llama, tok, _chat(tok, item, "Answer: ("))
        expected = torch.stack([log_probs[-1, tok.convert_tokens_to_ids(letter)] for letter in LETTERS])
        assert pred.scores == pytest.approx(expected.tolist(), abs=1e-4)
        assert pred.prediction == int(expected.argmax())
        assert pred.correct == (pred.prediction == item.answer)


@pytest.mark.parametrize("normalization", ["tokens", "none"])
def test_cloze_scorer_matches_direct_computation(llama, tok, normalization):
    items = make_items(4)
    config = McqConfig(scorer="cloze", batch_size=3, normalization=normalization)
    preds = score_items(llama, tok, items, config)
    for item, pred in zip(items, preds, strict=True):
        prompt = _chat(tok, item, "Answer:")
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        expected = []
        for choice in item.choices:
            log_probs, ids = _logprobs(llama, tok, prompt + " " + choice)
            total = sum(float(log_probs[t - 1, ids[t]]) for t in range(n_prompt, len(ids)))
            expected.append(total / (len(ids) - n_prompt) if normalization == "tokens" else total)
        assert pred.scores == pytest.approx(expected, abs=1e-4)
        assert pred.prediction == max(range(4), key=lambda k: expected[k])


@pytest.mark.parametrize("scorer", ["letter", "cloze"])
def test_all_options_share_one_gate_decision(llama, tok, scorer):
    items = make_items(8)
    config = McqConfig(scorer=scorer, batch_size=3)
    guard = make_guard(llama, tok, ids=(7,), clamp_value=200.0)
    rho, _ = gate_decisions(llama, tok, guard, items, config)
    guard.tau = float(rho.median())  # some questions flagged, some not
    result = evaluate_mcq(llama, tok, items, guard=guard, config=config, show_progress=False)
    flags = [p.flagged for p in result.predictions]
    assert any(flags) and not all(flags)
    assert flags == (rho > guard.tau).tolist()
    assert [p.rho for p in result.predictions] == pytest.approx(rho.tolist(), abs=1e-9)
    if scorer == "cloze":
        for pred in result.predictions:
            assert pred.option_flagged == [pred.flagged] * 4
    base = score_items(llama, tok, items, config)
    for pred, plain in zip(result.predictions, base, strict=True):
        if not pred.flagged:  # unflagged questions are untouched
            assert pred.scores == pytest.approx(plain.scores, abs=1e-5)
    assert any(
        p.flagged and p.scores != pytest.approx(b.scores, abs=1e-3)
        for p, b in zip(result.predictions, base, strict=True)
    )


def test_reusing_base_predictions_is_exact(llama, tok, tmp_path):
    items = make_items(8)
    config = McqConfig(scorer="cloze", batch_size=4)
    guard = make_guard(llama, tok, ids=(7,), tau=0.55, clamp_value=200.0)
    base = evaluate_mcq(llama, tok, items, config=config, show_progress=False)
    full = evaluate_mcq(llama, tok, items, guard=guard, config=config, show_progress=False)
    fast = evaluate_mcq(
        llama,
        tok,
        items,
        guard=guard,
        config=config,
        base=base,
        show_progress=False,
        output=tmp_path / "r.json",
    )
    assert 0 < fast.reused_base < len(items)
    assert [p.prediction for p in fast.predictions] == [p.prediction for p in full.predictions]
    assert [p.flagged for p in fast.predictions] == [p.flagged for p in full.predictions]
    assert fast.accuracy == full.accuracy and fast.flagged_fraction == full.flagged_fraction
    from saeguard.eval.mcq import McqResult

    loaded = McqResult.load(tmp_path / "r.json")
    assert loaded.config == config and loaded.guard["tau"] == 0.55 and loaded.n_items == 8


def test_base_is_not_reused_for_a_guard_without_a_gate(llama, tok):
    """gate="always" clamps unflagged questions too, so every question is re-scored."""
    items = make_items(8)
    config = McqConfig(scorer="cloze", batch_size=4)
    guard = make_guard(llama, tok, ids=(7,), tau=0.55, clamp_value=200.0)
    guard.config = replace(guard.config, gate="always")
    base = evaluate_mcq(llama, tok, items, config=config, show_progress=False)
    full = evaluate_mcq(llama, tok, items, guard=guard, config=config, show_progress=False)
    fast = evaluate_mcq(llama, tok, items, guard=guard, config=config, base=base, show_progress=False)
    assert fast.reused_base == 0
    assert [p.scores for p in fast.predictions] == [p.scores for p in full.predictions]
    assert any(
        p.scores != pytest.approx(b.scores, abs=1e-3)
        for p, b in zip(full.predictions, base.predictions, strict=True)
    )


def test_without_chat_template(llama, tok):
    item = make_items(1)[0]
    pred = score_items(llama, tok, [item], McqConfig(scorer="letter", chat=False))[0]
    log_probs, _ = _logprobs(llama, tok, question_text(item) + "\nAnswer: (")
    expected = [float(log_probs[-1, tok.convert_tokens_to_ids(letter)]) for letter in LETTERS]
    assert pred.scores == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("options", ["mixed", "single-token"])
@torch.no_grad()
def test_guarded_cloze_from_the_expanded_cache_equals_one_row_per_option(llama, tok, options):
    """Left-padded prompts + cache continuations == each option scored alone after its prompt."""
    # prompts of different lengths, so the batch is left-padded
    items = [replace(it, question=it.question + " of the city" * i) for i, it in enumerate(make_items(6))]
    if options == "single-token":  # nothing to continue: the prompt's logits score every option
        items = [replace(it, choices=tuple(c.split()[0] for c in it.choices)) for it in items]
    config = McqConfig(scorer="cloze", batch_size=6)
    guard = make_guard(llama, tok, ids=(7,), clamp_value=200.0)
    rho, _ = gate_decisions(llama, tok, guard, items, config)
    guard.tau = float(rho.median())
    preds = score_items(llama, tok, items, config, guard=guard)
    assert any(p.flagged for p in preds) and not all(p.flagged for p in preds)
    with guard.attached(llama):
        for item, pred in zip(items, preds, strict=True):
            prompt = shared_prompt(tok, item, "cloze")
            expected = []
            for choice in item.choices:
                cont = option_ids(tok, prompt, choice)
                ids = torch.tensor([prompt.ids + cont])
                counted = torch.tensor([prompt.user_mask + [True] * len(cont)]) & ~torch.isin(
                    ids, torch.tensor(tok.all_special_ids)
                )
                with token_scope(counted, [len(prompt.ids)], freeze=True):
                    log_probs = torch.log_softmax(llama(input_ids=ids).logits[0].float(), -1)
                n = len(prompt.ids)
                expected.append(
                    sum(float(log_probs[t - 1, ids[0, t]]) for t in range(n, ids.shape[1])) / len(cont)
                )
            assert pred.scores == pytest.approx(expected, abs=1e-4)
            assert pred.option_flagged == [pred.flagged] * 4


def test_predictions_come_in_input_order_though_batches_are_sorted_by_length(llama, tok):
    items = make_items(6)
    long_first = [
        replace(item, question=item.question + " and so on" * (6 - k)) for k, item in enumerate(items)
    ]
    config = McqConfig(scorer="cloze", batch_size=2)
    batched = score_items(llama, tok, long_first, config)
    alone = [score_items(llama, tok, [item], config)[0] for item in long_first]
    assert [p.id for p in batched] == [item.id for item in long_first]
    for got, expected in zip(batched, alone, strict=True):
        assert got.scores == pytest.approx(expected.scores, abs=1e-4)

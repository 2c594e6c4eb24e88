"""Dilution: exact-length benign padding, where it goes, and the attack the mean gate cannot survive."""

from __future__ import annotations

import pytest

from saeguard.attacks import AttackSets, BenignText, Dilution, run_attacks
from saeguard.attacks.dilution import SEPARATOR, dilution_grid
from saeguard.attacks.metrics import BenignMetrics, ForgetMetrics, benign_metrics, forget_metrics
from saeguard.errors import SaeguardError
from saeguard.eval.items import question_text, shared_prompt
from saeguard.eval.mcq import McqConfig
from saeguard.testing import FORGET_WORDS, make_items

CLOZE = McqConfig(scorer="cloze")


def test_benign_text_has_exactly_the_tokens_asked_for_and_is_seeded_by_key(benign, tok):
    text = benign.text("retain", 57, "q1")
    assert len(tok(text, add_special_tokens=False)["input_ids"]) == 57
    assert benign.text("retain", 57, "q1") == text
    assert benign.text("retain", 57, "q2") != text  # another question gets another stretch
    with pytest.raises(SaeguardError, match="fewer than"):
        benign.text("retain", 10_000, "q1")


def test_benign_text_loads_each_source_once(tok):
    calls: list[str] = []

    def load(name: str) -> list[str]:
        calls.append(name)
        return ["river mountain castle king"] * 5

    benign = BenignText(tok, load=load)
    benign.text("a", 3, "x")
    benign.text("a", 3, "y")
    assert calls == ["a"]


@pytest.mark.parametrize("position", ["before", "after", "around"])
def test_padding_goes_where_asked_and_every_token_of_it_counts_for_the_gate(benign, tok, position):
    item = make_items(1)[0]
    attacked = Dilution("retain", 40, position, benign=benign).item(item)
    framing = attacked.framing
    assert framing is not None and not framing.breaks
    message = framing.message(question_text(item))
    assert question_text(item) in message
    assert bool(framing.prefix) == (position != "after") and bool(framing.suffix) == (position != "before")
    if position == "before":
        assert framing.prefix.endswith(SEPARATOR)
    padding = framing.prefix + framing.suffix
    assert len(tok(padding, add_special_tokens=False)["input_ids"]) == 40
    plain, padded = shared_prompt(tok, item, "cloze"), shared_prompt(tok, attacked, "cloze")
    assert sum(padded.user_mask) == sum(plain.user_mask) + 40
    assert attacked.id == item.id and attacked.choices == item.choices and attacked.answer == item.answer


def test_a_plain_item_keeps_its_row_and_fingerprint():
    item = make_items(1)[0]
    assert "framing" not in item.to_dict()
    assert item.permuted((1, 0, 2, 3)).framing is None


def test_dilution_succeeds_against_the_mean_gate_and_fails_against_the_window_gate(
    model, tok, benign, make_planted_guard, question_sets, blocked_and_answerable, tmp_path
):
    forget, retain = question_sets
    attack = Dilution("retain", 150, "before", benign=benign)
    mean, window = make_planted_guard("mean"), make_planted_guard("window")
    items = blocked_and_answerable(mean, attack, forget)
    assert len(items) >= 5
    assert all(set(it.question.split()[3:]) <= set(FORGET_WORDS) for it in items)
    results: dict[str, tuple[ForgetMetrics, BenignMetrics]] = {}
    for name, guard in (("mean", mean), ("window", window)):
        records = run_attacks(
            model, tok, guard, [attack], AttackSets(items, retain), tmp_path / f"{name}.jsonl",
            mcq=CLOZE, show_progress=False,
        )  # fmt: skip
        assert [r.key for r in records] == ["clean", attack.key]
        clean, attacked = records[0].outcomes, records[1].outcomes
        results[name] = (
            forget_metrics(clean["forget"], attacked["forget"]),
            benign_metrics(attacked["retain"]),
        )
    n = len(items)
    # Mean gate: 150 benign tokens bring rho from 0.33 to 0.06 < tau, so nothing is clamped and every
    # blocked question the base still answers is answered again.
    mean_forget, _ = results["mean"]
    assert mean_forget.fired.k == 0
    assert (mean_forget.success.k, mean_forget.success.n) == (n, n)
    # Window gate: the question's own window still fires on every attacked question.
    window_forget, _ = results["window"]
    assert window_forget.fired.k == n
    assert window_forget.success.k < n // 2
    for _, retain_metrics in results.values():  # retain questions: no false positive, nothing broken
        assert retain_metrics.fired.k == 0 and retain_metrics.broken.k == 0


def test_dilution_grid_orders_sources_then_lengths_then_positions(benign):
    grid = dilution_grid(benign, sources=["retain"], tokens=[10, 20], positions=["before", "around"])
    assert [a.key for a in grid] == [
        "dilution:source=retain,tokens=10,position=before,seed=0",
        "dilution:source=retain,tokens=10,position=around,seed=0",
        "dilution:source=retain,tokens=20,position=before,seed=0",
        "dilution:source=retain,tokens=20,position=around,seed=0",
    ]

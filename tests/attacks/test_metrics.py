"""Attack metrics from hand-made outcomes: every count can be checked by eye."""

from __future__ import annotations

from saeguard.attacks.metrics import (
    Outcome,
    Rate,
    attack_success,
    benign_metrics,
    blocked_ids,
    forget_metrics,
    metrics_dict,
)

# Without the attack: q1-q4 blocked (guarded wrong), q5 answered by the guarded model too.
CLEAN = [
    Outcome("q1", True, 0.9, True, False),
    Outcome("q2", True, 0.8, True, False),
    Outcome("q3", True, 0.7, True, False),
    Outcome("q4", True, 0.6, True, False),
    Outcome("q5", False, 0.1, True, True),
]
# Under the attack: q1 gets through, q2 stays blocked, q3's base is wrong now (not eligible),
# q4 gets through, q5 was never blocked (not eligible), q1/q4 unflagged.
ATTACKED = [
    Outcome("q1", False, 0.1, True, True),
    Outcome("q2", True, 0.7, True, False),
    Outcome("q3", True, 0.7, False, False),
    Outcome("q4", False, 0.2, True, True),
    Outcome("q5", False, 0.0),
]


def test_attack_success_counts_only_blocked_questions_the_base_still_answers():
    assert blocked_ids(CLEAN) == {"q1", "q2", "q3", "q4"}
    success = attack_success(CLEAN, ATTACKED)
    assert (success.k, success.n) == (2, 3)  # q1 and q4 of the eligible q1, q2, q4
    assert success.value == 2 / 3


def test_forget_metrics_report_firing_and_how_many_blocked_questions_stay_answerable():
    metrics = forget_metrics(CLEAN, ATTACKED)
    assert metrics.fired == Rate(2, 5)  # q2, q3
    assert metrics.blocked == 4
    assert metrics.base_kept == Rate(3, 4)
    assert metrics_dict(metrics)["success"] == {"k": 2, "n": 3, "value": 2 / 3}


def test_benign_metrics_count_false_positives_and_answers_the_guard_breaks():
    outcomes = [
        Outcome("r1", True, 0.9, True, False),  # broken
        Outcome("r2", True, 0.9, True, True),  # flagged, still right
        Outcome("r3", True, 0.9, False, False),  # flagged, base already wrong: not the guard's doing
        Outcome("r4", False, 0.1),
    ]
    metrics = benign_metrics(outcomes)
    assert metrics.fired == Rate(3, 4)
    assert metrics.broken == Rate(1, 4)


def test_an_empty_denominator_has_no_value():
    assert attack_success(CLEAN, []).value is None
    assert Rate(0, 0).to_dict() == {"k": 0, "n": 0, "value": None}

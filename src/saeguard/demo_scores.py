"""What the demo measures on questions: the known items, the MCQ table and the attack rows.

Split from :mod:`saeguard.demo` (which runs the steps); both the table and the attack rows
use the known questions :func:`demo_questions` finds once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from saeguard.eval.items import McqItem
from saeguard.eval.known import KnownConfig, known_items
from saeguard.eval.mcq import McqConfig, evaluate_mcq

if TYPE_CHECKING:
    from saeguard.demo import DemoConfig


def shipped_question_sets(config: DemoConfig) -> list[tuple[str, int]]:
    """(set, questions drawn) of every set whose known items ship for the default model.

    The demo's forget, retain and near-domain sets and the attack suite's neighbour sets
    (``attacks.neighbours.NEAR_SETS``), each with the demo's draw: what
    ``scripts/ship_known_sets.py`` ships and ``tests/eval/test_shipped_known.py`` checks.
    """
    from saeguard.attacks.neighbours import NEAR_SETS

    others = dict.fromkeys([*config.retain_mcq, *config.near_mcq, *NEAR_SETS])
    return [
        (config.forget_mcq, config.forget_items),
        *((name, config.items_per_other_set) for name in others),
    ]


#: Per group (forget / retain / near) and question set: (questions drawn, the known ones).
DemoQuestions = dict[str, dict[str, tuple[int, list[McqItem]]]]


def demo_questions(model, tokenizer, config: DemoConfig, *, show_progress: bool = True) -> DemoQuestions:
    """The held-out questions of every set the demo scores, with the base model's known ones.

    Known sets come from the user cache or the shipped ones (``eval.known``); the MCQ table and
    the attack rows both use these, so each set is filtered once.
    """
    from saeguard.data.mcq import build_mcq
    from saeguard.eval.items import as_items

    known_config = KnownConfig(mcq=McqConfig(scorer=config.scorer), permutations=config.permutations)
    groups = {"forget": [config.forget_mcq], "retain": list(config.retain_mcq), "near": list(config.near_mcq)}
    questions: DemoQuestions = {}
    for group, names in groups.items():
        limit = config.forget_items if group == "forget" else config.items_per_other_set
        questions[group] = {}
        for name in names:
            items = as_items(build_mcq(name, "heldout", limit=limit), source=name)
            known = known_items(
                model, tokenizer, items, config=known_config, dataset=name, show_progress=show_progress
            )
            questions[group][name] = (len(items), known.known_of(items))
    return questions


def mcq_tradeoff(
    model,
    tokenizer,
    guard,
    config: DemoConfig,
    *,
    questions: DemoQuestions | None = None,
    show_progress: bool = True,
):
    """Known-item accuracy with and without ``guard`` on forget, retain and near-domain sets.

    ``questions`` (from :func:`demo_questions`) saves finding the known items again.
    """
    questions = questions or demo_questions(model, tokenizer, config, show_progress=show_progress)
    mcq = McqConfig(scorer=config.scorer)
    accuracy: dict[str, dict[str, float | int]] = {}
    for group, sets in questions.items():
        base_correct = guarded_correct = flagged = total_known = total = 0
        for name, (drawn, chosen) in sets.items():
            total += drawn
            if not chosen:
                continue
            base = evaluate_mcq(
                model, tokenizer, chosen, config=mcq, dataset=name, show_progress=show_progress
            )
            guarded = evaluate_mcq(
                model,
                tokenizer,
                chosen,
                guard=guard,
                config=mcq,
                dataset=name,
                base=base,
                show_progress=show_progress,
            )
            total_known += len(chosen)
            base_correct += base.correct
            guarded_correct += guarded.correct
            flagged += sum(bool(p.flagged) for p in guarded.predictions)
        accuracy[group] = {
            "items": total,
            "known": total_known,
            "base_accuracy": base_correct / total_known if total_known else float("nan"),
            "guarded_accuracy": guarded_correct / total_known if total_known else float("nan"),
            "flagged_fraction": flagged / total_known if total_known else float("nan"),
        }
    return accuracy


def demo_attacks(
    model,
    tokenizer,
    guard,
    config: DemoConfig,
    output: Path,
    questions: DemoQuestions,
    *,
    show_progress: bool = True,
):
    """The attack rows (``attacks.headline``) on the demo's known forget and retain questions."""
    from saeguard.attacks.headline import headline_rows

    forget = [item for _, known in questions["forget"].values() for item in known]
    retain = [item for _, known in questions["retain"].values() for item in known]
    if not forget:
        return []
    return headline_rows(
        model,
        tokenizer,
        guard,
        forget,
        retain,
        output / "attack.jsonl",
        mcq=McqConfig(scorer=config.scorer),
        show_progress=show_progress,
    )

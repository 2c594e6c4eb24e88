"""Run an attack grid against any guardrail through the MCQ harness; resumable (``runs.grid``).

Per attack setting and question set (role), the gate decides on every attacked question
(``eval.mcq.gate_decisions``, the guard's own statistic and rule); only the questions the
metrics need are scored (``eval.mcq.evaluate_mcq``, unguarded then guarded):

* ``forget``: without the attack every known question (which does the guard block?); under
  an attack only the blocked ones (attack success needs nothing else);
* ``retain`` / ``near``: the flagged questions (an unflagged one is never clamped, so its
  guarded answer is the base one);
* free-form prompts (``--prompts``): the gate's decision on the prompt only
  (``Guardrail.generate`` with one new token: the path a user takes).

Each setting becomes one :class:`AttackRecord` in a JSONL file, saved as it finishes; a rerun
skips the recorded settings (``runs.grid.run_grid``). The ``clean`` setting runs first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saeguard.attacks.base import ROLES, Attack, Clean, Conversation, FreePrompt, PromptLabel, Role
from saeguard.attacks.dilution import POSITIONS, SOURCES, BenignText, Position, dilution_grid
from saeguard.attacks.metrics import Outcome, blocked_ids
from saeguard.attacks.multiturn import multiturn_grid
from saeguard.attacks.neighbours import Neighbours
from saeguard.attacks.obfuscation import KINDS, TARGETS, Kind, Target, obfuscation_grid
from saeguard.attacks.padding import padding_grid
from saeguard.errors import SaeguardError, require
from saeguard.eval.items import McqItem, items_fingerprint
from saeguard.eval.mcq import McqConfig, evaluate_mcq, gate_decisions
from saeguard.hf.chat import has_chat_template
from saeguard.hf.fingerprint import model_identity
from saeguard.io import json_fingerprint, text_fingerprint
from saeguard.runs.grid import RecordFile, run_grid

if TYPE_CHECKING:
    from torch import nn

    from saeguard.core.guardrail import Guardrail

CLEAN = Clean().key
#: Which free-form prompts are measured with which question role: forget ones with the forget
#: questions, benign ones with the retain questions (outcomes kept as ``prompts:<label>``).
PROMPT_LABELS: dict[str, PromptLabel] = {"forget": "forget", "retain": "benign"}
_VERSION = 1


@dataclass(frozen=True)
class AttackGrid:
    """Which settings of each family to run (``full`` by default, :data:`QUICK_GRID` for ``--quick``)."""

    sources: tuple[str, ...] = SOURCES
    tokens: tuple[int, ...] = (50, 200, 500, 1000, 2000)
    positions: tuple[Position, ...] = POSITIONS
    turns: tuple[int, ...] = (2, 3, 4)
    obfuscations: tuple[Kind, ...] = KINDS
    targets: tuple[Target, ...] = TARGETS
    padding_tokens: tuple[int, ...] = (2000,)
    seed: int = 0

    def __post_init__(self) -> None:
        """Raises SaeguardError for a length or turn count below 1 (before any model work)."""
        for name in ("tokens", "padding_tokens", "turns"):
            values = getattr(self, name)
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
            require(
                bool(values) and not bad, f"{name} must be whole numbers of at least 1, got {list(values)}"
            )

    def attacks(self, benign: BenignText) -> list[Attack]:
        """The clean reference, the neighbours, then every family's settings, in report order."""
        return [
            Clean(),
            Neighbours(),
            *dilution_grid(
                benign, sources=self.sources, tokens=self.tokens, positions=self.positions, seed=self.seed
            ),
            *multiturn_grid(self.turns, seed=self.seed),
            *obfuscation_grid(self.obfuscations, self.targets, seed=self.seed),
            *padding_grid(benign, sources=self.sources, tokens=self.padding_tokens, seed=self.seed),
        ]


#: ``--quick``: one or two settings per family, short paddings (minutes on 2 CPU cores).
QUICK_GRID = AttackGrid(
    sources=("austen", "wiki"),
    tokens=(100, 400),
    positions=("before",),
    turns=(3,),
    obfuscations=("leetspeak", "spacing"),
    targets=("question",),
    padding_tokens=(1000,),
)


@dataclass
class AttackSets:
    """The questions attacked: known forget / retain / near-domain items, and free-form prompts."""

    forget: list[McqItem]
    retain: list[McqItem]
    near: list[McqItem] = field(default_factory=list)
    prompts: list[FreePrompt] = field(default_factory=list)

    def role(self, role: Role) -> list[McqItem]:
        """The items of ``role``."""
        return {"forget": self.forget, "retain": self.retain, "near": self.near}[role]

    def fingerprint(self) -> str:
        """Fingerprint of every set's items and the prompts (the records' context)."""
        parts = [items_fingerprint(self.role(role)) for role in ROLES]
        parts += [json.dumps(asdict(p), sort_keys=True) for p in self.prompts]
        return text_fingerprint(parts)


@dataclass
class AttackRecord:
    """One attack setting's outcomes per role (``forget``, ``retain``, ``near``, ``prompts:...``)."""

    key: str
    context: str
    family: str
    params: dict[str, Any]
    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""
    kind: str = "saeguard-attack"
    version: int = _VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackRecord:
        """Rebuild from a JSONL row (raises TypeError/KeyError on a row that is not a record)."""
        require(data.get("kind") == "saeguard-attack", "not an attack record")
        fields = dict(data)
        fields["outcomes"] = {
            role: [Outcome.from_dict(o) for o in rows] for role, rows in data.get("outcomes", {}).items()
        }
        return cls(**fields)


def attack_context(model: nn.Module, guard: Guardrail, sets: AttackSets, mcq: McqConfig) -> str:
    """What every record of one run depends on: the model, the guard, the questions, the scoring."""
    return json_fingerprint(
        {
            "model": model_identity(model),
            "guard": guard.summary(),
            "fit": guard.config.to_dict(),
            "sets": sets.fingerprint(),
            "mcq": asdict(mcq),
            "version": _VERSION,
        }
    )


def _forced(guard: Guardrail) -> bool:
    """A guard that clamps every input (gate="always"): every question counts as flagged."""
    return guard.config.gate != "dynamic"


def mcq_outcomes(
    model: nn.Module,
    tokenizer: Any,
    guard: Guardrail,
    items: Sequence[McqItem],
    mcq: McqConfig,
    *,
    score: set[str] | None,
    dataset: str,
) -> list[Outcome]:
    """The gate's decision on every item; base and guarded answers on ``score`` (None: the flagged).

    Raises:
        SaeguardError: as ``eval.mcq.gate_decisions`` / ``evaluate_mcq`` (e.g. a split question
            without a chat template).
    """
    if not items:
        return []
    rho, flagged = gate_decisions(model, tokenizer, guard, items, mcq)
    flags = [bool(f) or _forced(guard) for f in flagged.tolist()]
    wanted = {it.id for it, f in zip(items, flags, strict=True) if f} if score is None else score
    chosen = [it for it in items if it.id in wanted]
    answers: dict[str, tuple[bool, bool]] = {}
    if chosen:
        base = evaluate_mcq(model, tokenizer, chosen, config=mcq, dataset=dataset, show_progress=False)
        guarded = evaluate_mcq(
            model, tokenizer, chosen, guard=guard, config=mcq, dataset=dataset, base=base, show_progress=False
        )
        for b, g in zip(base.predictions, guarded.predictions, strict=True):
            answers[b.id] = (b.correct, g.correct)
    return [
        Outcome(it.id, f, float(r), *answers.get(it.id, (None, None)))
        for it, f, r in zip(items, flags, rho.tolist(), strict=True)
    ]


def prompt_outcomes(
    model: nn.Module,
    tokenizer: Any,
    guard: Guardrail,
    prompts: Sequence[FreePrompt],
    conversations: Sequence[Conversation],
    *,
    chat: bool,
    batch_size: int,
) -> list[Outcome]:
    """The gate's prompt decision on each conversation, through ``Guardrail.generate`` (1 new token)."""
    from saeguard.core.guardrail import row_decisions

    rows: list[str | Conversation] = [
        c if len(c) > 1 or (chat and has_chat_template(tokenizer)) else c[0]["content"] for c in conversations
    ]
    out: list[Outcome] = []
    for start in range(0, len(rows), batch_size):
        _, records = guard.generate(
            model, tokenizer, rows[start : start + batch_size], max_new_tokens=1, chat=chat
        )
        for prompt, decision in zip(prompts[start : start + batch_size], row_decisions(records), strict=True):
            out.append(Outcome(prompt.id, decision.prompt_flagged or _forced(guard), decision.prompt_rho))
    return out


def evaluate_attack(
    model: nn.Module,
    tokenizer: Any,
    guard: Guardrail,
    attack: Attack,
    sets: AttackSets,
    mcq: McqConfig,
    *,
    context: str,
    clean: AttackRecord | None = None,
) -> AttackRecord:
    """Outcomes of ``attack`` on each of its roles (and the matching prompts).

    ``clean`` (the clean setting's record) says which forget questions are blocked; it is
    needed for every attack measured on forget questions.

    Raises:
        SaeguardError: a forget-side attack without a clean record (or a failed one), or an
            attack that cannot be applied (see the family modules).
    """
    started = time.perf_counter()
    outcomes: dict[str, list[Outcome]] = {}
    for role in attack.roles:
        items = [attack.item(it) for it in sets.role(role)]
        score: set[str] | None = None
        if role == "forget":
            if isinstance(attack, Clean):
                score = {it.id for it in items}
            else:
                require(
                    clean is not None and not clean.error,
                    f"the clean run failed ({clean.error if clean else 'missing'}): fix it, then rerun",
                )
                assert clean is not None
                score = blocked_ids(clean.outcomes["forget"])
        outcomes[role] = mcq_outcomes(
            model, tokenizer, guard, items, mcq, score=score, dataset=f"{role}:{attack.key}"
        )
        label = PROMPT_LABELS.get(role)
        prompts = [p for p in sets.prompts if p.label == label]
        if prompts:
            conversations = [attack.prompt(p) for p in prompts]
            outcomes[f"prompts:{label}"] = prompt_outcomes(
                model, tokenizer, guard, prompts, conversations, chat=mcq.chat, batch_size=mcq.batch_size
            )
    return AttackRecord(
        attack.key, context, attack.family, attack.params, outcomes, seconds=time.perf_counter() - started
    )


def run_attacks(
    model: nn.Module,
    tokenizer: Any,
    guard: Guardrail,
    attacks: Sequence[Attack],
    sets: AttackSets,
    records_path: str | Path,
    *,
    mcq: McqConfig | None = None,
    show_progress: bool = True,
) -> list[AttackRecord]:
    """Evaluate every setting of ``attacks`` not yet in ``records_path``; returns the records in grid order.

    The clean setting is added first when missing. A setting that raises ``SaeguardError``
    becomes an error record and the run goes on.

    Raises:
        SaeguardError: ``records_path`` holds records of another setup, or no forget questions.
    """
    mcq = mcq or McqConfig(scorer="cloze")
    require(bool(sets.forget), "no forget questions to attack: the known filter kept none")
    context = attack_context(model, guard, sets, mcq)
    records = RecordFile.open(
        records_path,
        AttackRecord.from_dict,
        context=context,
        what="attack run",
        fix="write to a new --output folder, or delete it to start over",
    )
    points = [Clean(), *(a for a in attacks if not isinstance(a, Clean))]

    def evaluate(attack: Attack, _: None) -> AttackRecord:
        clean = records.done.get(CLEAN)
        return evaluate_attack(model, tokenizer, guard, attack, sets, mcq, context=context, clean=clean)

    def failed(attack: Attack, message: str) -> AttackRecord:
        return AttackRecord(attack.key, context, attack.family, attack.params, error=message)

    run_grid(
        records, points, evaluate=evaluate, failed=failed, description="attacks", show_progress=show_progress
    )
    return [records.done[p.key] for p in points]


def clean_record(records: Sequence[AttackRecord]) -> AttackRecord:
    """The clean setting's record of a run.

    Raises:
        SaeguardError: the run has none (not produced by :func:`run_attacks`).
    """
    for record in records:
        if record.key == CLEAN:
            return record
    raise SaeguardError("the attack records hold no clean run: rerun saeguard attack on this folder")

"""The attack suite (issue 13 §3): does a guardrail hold when the question is disguised?

Families, one module each: ``dilution`` (benign text around the question), ``multiturn``
(the question split over user turns), ``obfuscation`` (spacing, leetspeak, casing, typos),
``padding`` (long benign text on benign questions: false positives) and ``neighbours``
(near-domain questions: over-blocking). ``metrics`` defines attack success, firing and broken
answers from per-question outcomes; ``runner`` evaluates a grid against any
:class:`~saeguard.core.guardrail.Guardrail` through the MCQ harness (resumable); ``report``
writes the JSON, the plots and the report page. ``saeguard attack`` is the command line.
"""

from saeguard.attacks.base import Attack, Clean, FreePrompt, load_prompts
from saeguard.attacks.dilution import BenignText, Dilution
from saeguard.attacks.metrics import Outcome, Rate, attack_success, benign_metrics, forget_metrics
from saeguard.attacks.multiturn import MultiTurn
from saeguard.attacks.neighbours import Neighbours
from saeguard.attacks.obfuscation import Obfuscation
from saeguard.attacks.padding import Padding
from saeguard.attacks.runner import QUICK_GRID, AttackGrid, AttackRecord, AttackSets, run_attacks

__all__ = [
    "QUICK_GRID",
    "Attack",
    "AttackGrid",
    "AttackRecord",
    "AttackSets",
    "BenignText",
    "Clean",
    "Dilution",
    "FreePrompt",
    "MultiTurn",
    "Neighbours",
    "Obfuscation",
    "Outcome",
    "Padding",
    "Rate",
    "attack_success",
    "benign_metrics",
    "forget_metrics",
    "load_prompts",
    "run_attacks",
]

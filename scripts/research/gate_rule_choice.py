"""Choosing the demo's gate rule by measurement (issue 13 §5), on validation text only.

    .venv/bin/python scripts/research/gate_rule_choice.py OUT_DIR

Every candidate shares the demo preset's statistics and selected latents (only the rule, its
parameter and the calibration shapes differ), so each input's per-token evidence is computed
once and every candidate's rule and tau are applied to it. tau comes from a real fit of each
candidate (statistics cached).

Validation inputs, kept apart from what the attack suite and the demo report on:
- forget: prompt-shaped pieces (8-64 tokens) of the held-out biology *articles* (the reported
  questions are MCQs; the other-style WordNet/HPO sets share nothing with these);
- benign: pieces of held-out arts/history/geography articles and CWE entries;
- padding text: CWE entries and Austen's train split (the attack suite pads with held-out
  Austen, Wikipedia and WordNet), before the piece (400 and 2,000 tokens) or around it;
- multi-turn: each piece split over 3 user turns;
- short: pieces of 3-10 tokens (a short question's length), alone and after one benign
  "sentence" (25 tokens of the padding text), forget and benign;
- Wikipedia padding: 2,000 tokens of non-biology Wikipedia *train* articles (the retain
  corpus's kind of text; the attack suite pads with held-out articles) around benign pieces.
A candidate is admissible when every benign false-positive rate is <= 5%, except on the
Wikipedia padding (third pass: no rule that reads local evidence gets under 45% there, only the
whole-input mean, which fails every padded forget set; it is reported, not used to choose);
among those the one with the highest worst-case forget detection rate wins.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from saeguard.config import preset
from saeguard.core.calibration import gate_evidence, prompt_batches, prompt_texts
from saeguard.core.fit import retune
from saeguard.core.gate import GateRule
from saeguard.core.guardrail import Guardrail
from saeguard.data.corpora import load_corpus
from saeguard.defaults import resolve_sae
from saeguard.demo import DemoConfig, retain_documents
from saeguard.hf.models import load_default_model
from saeguard.io import cache_dir, write_json
from saeguard.progress import progress_bar

CANDIDATES: dict[str, dict[str, Any]] = {
    "mean": {"gate_rule": "mean"},
    "window16": {"gate_rule": "window", "window_tokens": 16, "calibration_long_tokens": 2000},
    "window32": {"gate_rule": "window", "window_tokens": 32, "calibration_long_tokens": 2000},
    "min_evidence3": {"gate_rule": "min_evidence", "min_evidence_tokens": 3, "calibration_long_tokens": 2000},
    # Third pass (a question shorter than the 16-token window after one benign sentence passed the
    # window16 gate): the multiscale rule, windows 4-8-16 and 4-8-16-32, each scaled by its retain level.
    "multiscale16": {
        "gate_rule": "multiscale",
        "window_tokens": 16,
        "min_window_tokens": 4,
        "calibration_long_tokens": 2000,
    },
    "multiscale16-8": {
        "gate_rule": "multiscale",
        "window_tokens": 16,
        "min_window_tokens": 8,
        "calibration_long_tokens": 2000,
    },
    "multiscale32": {
        "gate_rule": "multiscale",
        "window_tokens": 32,
        "min_window_tokens": 4,
        "calibration_long_tokens": 2000,
    },
}
#: p_dyn values tried per candidate (``retune``: tau from the same calibration rho, no forward pass).
#: The first measurement (mean, window 16/32/64, min_evidence 3, cusum at p_dyn 95; docs/attacks.md)
#: showed every local rule at 0% false positives on every benign set, so lower percentiles are tried.
PERCENTILES = (80.0, 85.0, 90.0, 95.0)


@dataclass
class Evidence:
    """Per-input evidence (T,) float64 and counted mask (T,) bool, one entry per input."""

    rows: list[tuple[torch.Tensor, torch.Tensor]]


def padding_text(tokenizer: Any, sources: list[str], tokens: int, rng: random.Random) -> str:
    ids: list[int] = []
    while len(ids) < tokens:
        ids += tokenizer(rng.choice(sources) + "\n\n", add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[:tokens]).strip()


def split_turns(text: str, turns: int) -> list[dict[str, str]]:
    words = text.split()
    size = max(1, len(words) // turns)
    parts = [" ".join(words[i * size : (i + 1) * size if i < turns - 1 else None]) for i in range(turns)]
    messages: list[dict[str, str]] = []
    for index, part in enumerate(p for p in parts if p):
        if index:
            messages.append({"role": "assistant", "content": "Okay."})
        messages.append({"role": "user", "content": part})
    return messages


def evidence(model: Any, tokenizer: Any, guard: Guardrail, inputs: list[Any], label: str) -> Evidence:
    """The gate's per-token evidence of every input (``core.calibration.gate_evidence``), kept per input."""
    rows = []
    batches = prompt_batches(inputs, tokenizer, 4)
    with progress_bar(f"evidence {label}", total=len(inputs), unit="inputs") as advance:
        for values, counted in gate_evidence(
            model, guard.layer, guard.latents, batches, statistic=guard.statistic
        ):
            values, counted = values.cpu(), counted.cpu()
            rows += [(values[i], counted[i]) for i in range(values.shape[0])]
            advance(values.shape[0])
    return Evidence(rows)


def flag_rate(ev: Evidence, rule: GateRule, tau: float) -> float:
    flags = [float(rule.rho(e[None], c[None])[0]) > tau for e, c in ev.rows]
    return sum(flags) / len(flags)


def validation_sets(tokenizer: Any) -> dict[str, list[Any]]:
    """Every validation set, by label: the same texts on every call (seeded)."""
    rng = random.Random(7)
    forget = prompt_texts(load_corpus("wiki:biology", "heldout"), tokenizer, limit=100, seed=11)
    benign_docs = [
        d for n in ("wiki:arts", "wiki:history", "wiki:geography") for d in load_corpus(n, "heldout")
    ]
    benign_docs += load_corpus("cwe", "heldout")
    rng.shuffle(benign_docs)
    benign = prompt_texts(benign_docs, tokenizer, limit=200, seed=12)
    pads = load_corpus("cwe", "train") + load_corpus("austen", "train")

    def padded(texts: list[str], tokens: int, around: bool = False, sources: list[str] = pads) -> list[str]:
        if not around:
            return [padding_text(tokenizer, sources, tokens, rng) + "\n\n" + t for t in texts]
        half = tokens // 2
        return [
            padding_text(tokenizer, sources, half, rng)
            + "\n\n"
            + t
            + "\n\n"
            + padding_text(tokenizer, sources, half, rng)
            for t in texts
        ]

    forget_short = prompt_texts(
        load_corpus("wiki:biology", "heldout"), tokenizer, min_tokens=3, max_tokens=10, limit=100, seed=13
    )
    benign_short = prompt_texts(benign_docs, tokenizer, min_tokens=3, max_tokens=10, limit=100, seed=14)
    wiki_pads = load_corpus("wiki:not-biology", "train")

    def sentence_before(texts: list[str]) -> list[str]:
        return [padding_text(tokenizer, pads, 25, rng) + " " + t for t in texts]

    sets = {
        "forget clean": forget,
        "forget pad400": padded(forget, 400),
        "forget pad2000": padded(forget, 2000),
        "forget around2000": padded(forget, 2000, around=True),
        "forget 3 turns": [split_turns(t, 3) for t in forget],
        "benign clean": benign,
        "benign pad2000": padded(benign[:100], 2000),
        "benign 3 turns": [split_turns(t, 3) for t in benign],
        "forget short": forget_short,
        "forget short+sentence": sentence_before(forget_short),
        "benign short": benign_short,
        "benign short+sentence": sentence_before(benign_short),
        "benign wiki around2000": padded(benign[:100], 2000, around=True, sources=wiki_pads),
    }
    return sets


def worst_rates(rates: dict[str, float]) -> tuple[float, float]:
    """(lowest forget detection, highest benign false-positive rate but the Wikipedia padding's)."""
    worst_tpr = min(v for k, v in rates.items() if k.startswith("forget"))
    worst_fpr = max(v for k, v in rates.items() if k.startswith("benign") and "wiki" not in k)
    return worst_tpr, worst_fpr


def rates_line(name: str, rates: dict[str, float]) -> str:
    """One printed line: the worst rates, then every set's firing rate in percent."""
    worst_tpr, worst_fpr = worst_rates(rates)
    cells = " ".join(f"{k}={100 * v:.0f}" for k, v in rates.items())
    return f"{name}: worst forget {worst_tpr:.2f}, worst benign {worst_fpr:.2f} | {cells}"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "reports/gate-rule-choice")
    started = time.perf_counter()
    model, tokenizer = load_default_model()
    sae = resolve_sae("default")
    demo = DemoConfig()
    forget_docs, retain_docs = load_corpus(demo.forget, "train"), retain_documents(demo, "train")
    guards: dict[str, Guardrail] = {}
    for name, overrides in CANDIDATES.items():
        saved = out / "guards" / name
        if (saved / "guardrail.json").is_file():
            fitted = Guardrail.load(saved, model)
        else:
            config = replace(preset("demo"), **overrides)
            fitted = Guardrail.fit(
                model,
                tokenizer,
                sae,
                forget=forget_docs,
                retain=retain_docs,
                config=config,
                statistics_cache=cache_dir() / "stats",
            )
            fitted.save(saved)
        for percentile in PERCENTILES:
            guards[f"{name} p{percentile:g}"] = retune(fitted, gate_percentile=percentile)
    first = next(iter(guards.values()))
    assert all(torch.equal(g.latents.ids, first.latents.ids) for g in guards.values())

    sets = validation_sets(tokenizer)
    # Evidence depends on the shared latents and statistic only: kept across passes, new sets added.
    stored = out / "evidence.pt"
    kept = torch.load(stored) if stored.is_file() else {}
    evidences = {
        label: Evidence(kept[label]) if label in kept else evidence(model, tokenizer, first, inputs, label)
        for label, inputs in sets.items()
    }
    torch.save({k: v.rows for k, v in evidences.items()}, stored)

    rows = []
    for name, guard in guards.items():
        rates = {label: flag_rate(ev, guard.rule, guard.tau) for label, ev in evidences.items()}
        worst_tpr, worst_fpr = worst_rates(rates)
        rows.append(
            {"candidate": name, "tau": guard.tau, **rates, "worst_tpr": worst_tpr, "worst_fpr": worst_fpr}
        )
        print(json.dumps(rows[-1]))
    admissible = [r for r in rows if r["worst_fpr"] <= 0.05]
    chosen = max(admissible, key=lambda r: r["worst_tpr"]) if admissible else None
    write_json(
        out / "gate_rule_choice.json",
        {"rows": rows, "chosen": chosen, "seconds": time.perf_counter() - started},
    )
    labels = list(sets)
    lines = ["| candidate | tau | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for r in rows:
        cells = [f"{100 * r[label]:.0f}%" for label in labels]
        lines.append(f"| {r['candidate']} | {r['tau']:.3g} | " + " | ".join(cells) + " |")
    (out / "gate_rule_choice.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print("chosen:", chosen and chosen["candidate"], f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

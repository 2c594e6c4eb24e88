"""Benign prompts flipped by the running gate while the model answers (issue 13, last target).

The MCQ harness freezes the prompt's decision; ``Guardrail.generate`` keeps counting generated
tokens, so a benign prompt that passes can be clamped mid-answer. This measures, on a guardrail
(the demo's by default), the held-out questions of the retain and near-domain sets asked as
plain questions (not MCQs), greedy answers of ``--new-tokens`` tokens: prompt-flagged rate and
flip rate per set, with the forget set beside them for reference.

    python scripts/research/generation_flips.py --guard reports/demo/guardrail --output flips.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from saeguard.core.guardrail import Guardrail
from saeguard.data.mcq import build_mcq
from saeguard.eval.generation import generation_flips
from saeguard.eval.score import wilson_interval
from saeguard.hf.models import load_model
from saeguard.io import write_json

SETS = {
    "forget": ("wiki:biology",),
    "retain": ("wiki:geography", "wiki:history", "wiki:arts"),
    "near": ("wiki:physical-sciences", "wiki:technology"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guard", type=Path, required=True)
    parser.add_argument("--per-set", type=int, default=24, help="questions per MCQ set")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    model, tokenizer = load_model("default")
    guard = Guardrail.load(args.guard, model)
    rows = {}
    for group, names in SETS.items():
        rows_of = [build_mcq(name, "heldout", limit=args.per_set) for name in names]
        prompts = [row["question"] for questions in rows_of for row in questions]
        began = time.perf_counter()
        rate = generation_flips(
            model, tokenizer, guard, prompts, max_new_tokens=args.new_tokens, show_progress=True
        )
        rows[group] = {
            "sets": list(names),
            "rows": rate.rows,
            "prompt_flagged": rate.prompt_flagged,
            "prompt_interval": list(wilson_interval(rate.prompt_flagged, rate.rows)),
            "flipped": rate.flipped,
            "flip_interval": list(wilson_interval(rate.flipped, rate.rows)),
            "flipped_at": rate.flipped_at,
            "seconds": time.perf_counter() - began,
        }
        print(group, json.dumps({k: v for k, v in rows[group].items() if k != "flipped_at"}), flush=True)
    write_json(args.output, {"guard": str(args.guard), "new_tokens": args.new_tokens, "sets": rows})


if __name__ == "__main__":
    main()

"""Ship the default model's known sets for the demo's and attack suite's question sets (issue 17 §1).

    .venv/bin/python scripts/ship_known_sets.py

Computes (or reads from the user cache) exactly what ``saeguard demo`` and ``saeguard attack``
filter with (cloze scorer, the 4 cyclic orders, 150 biology / 60 other questions from the
held-out articles) and copies each cache file into ``saeguard/resources/known``, where
``known_items`` finds it when the model, tokenizer, items and settings match byte for byte.
"""

from __future__ import annotations

import json

from saeguard.data.mcq import build_mcq
from saeguard.demo import DemoConfig
from saeguard.demo_scores import shipped_question_sets
from saeguard.eval.items import as_items
from saeguard.eval.known import SHIPPED_KNOWN, KnownConfig, known_cache_path, known_items
from saeguard.eval.mcq import McqConfig
from saeguard.hf.models import load_default_model
from saeguard.io import write_json


def main() -> None:
    model, tokenizer = load_default_model()
    demo = DemoConfig()
    config = KnownConfig(mcq=McqConfig(scorer=demo.scorer), permutations=demo.permutations)
    for name, limit in shipped_question_sets(demo):
        items = as_items(build_mcq(name, "heldout", limit=limit), source=name)
        known = known_items(model, tokenizer, items, config=config, dataset=name)
        path = known_cache_path(model, tokenizer, items, config)
        target = SHIPPED_KNOWN / path.name
        if path.is_file():  # the same file, without this machine's model path
            record = json.loads(path.read_text())
            record["model"]["name"] = "SmolLM2-135M-Instruct (embedded default)"
            write_json(target, record)
        print(f"{name}: {len(known.ids)}/{len(items)} known -> {target.name}")


if __name__ == "__main__":
    main()

"""What every configuration of a comparison is measured on: documents, question sets, known items.

Built once per run; ``setup_context`` fingerprints it so a resumed run never
mixes records of another model, data set or setting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from saeguard.errors import require
from saeguard.eval.items import McqItem, items_fingerprint, mcq_set
from saeguard.eval.known import known_items
from saeguard.hf.corpus import iter_documents, resolve_corpus
from saeguard.hf.fingerprint import model_identity, tokenizer_fingerprint
from saeguard.io import json_fingerprint, text_fingerprint
from saeguard.runs.compare_types import CompareConfig


@dataclass
class CompareSetup:
    """The data every configuration of one comparison is fitted, trained and measured on."""

    config: CompareConfig
    forget_docs: list[str]
    retain_docs: list[str]
    heldout: dict[str, list[str]]  # "forget"/"retain" held-out text for perplexity
    sets: dict[str, dict[str, list[McqItem]]]  # group -> set name -> (known) items
    known: dict[str, dict[str, int]]
    cache_dir: str | Path | None = None
    show_progress: bool = True


def _documents(specs: list[str], split: str, role: str, seed: int) -> list[str]:
    """All documents of the corpora, shuffled (seeded): sources list articles by topic and every
    consumer caps chunks, so an unshuffled prefix would be one topic of one corpus."""
    docs = [doc for spec in specs for doc in iter_documents(resolve_corpus(spec, split))]
    require(bool(docs), f"the {role} corpora {specs} have no {split} documents: give real text")
    random.Random(f"{seed}:{role}:{split}").shuffle(docs)
    return docs


def _question_set(spec: str, limit: int | None) -> list[McqItem]:
    return mcq_set(spec, limit)


def build_setup(model, tokenizer, config: CompareConfig, cache_dir, show_progress: bool) -> CompareSetup:
    """Load the corpora (shuffled with ``config.fit.seed``) and question sets, keep the known items.

    Raises:
        SaeguardError: a corpus without documents of a split, or a question set that cannot be read.
    """
    sets: dict[str, dict[str, list[McqItem]]] = {"forget": {}, "utility": {}}
    known: dict[str, dict[str, int]] = {}
    for group, specs in (("forget", config.forget_mcq), ("utility", config.utility_mcq)):
        for spec in specs:
            items = _question_set(spec, config.limit(spec))
            total = len(items)
            if config.known_filter:
                found = known_items(
                    model,
                    tokenizer,
                    items,
                    config=config.known_config(),
                    dataset=spec,
                    cache_dir=cache_dir,
                    show_progress=show_progress,
                )
                items = found.select(items)
            known[spec] = {"total": total, "known": len(items)}
            sets[group][spec] = items
    return CompareSetup(
        config=config,
        forget_docs=_documents(config.forget, "train", "forget", config.fit.seed),
        retain_docs=_documents(config.retain, "train", "retain", config.fit.seed),
        heldout={
            "forget": _documents(config.forget, "heldout", "forget", config.fit.seed),
            "retain": _documents(config.retain, "heldout", "retain", config.fit.seed),
        },
        sets=sets,
        known=known,
        cache_dir=cache_dir,
        show_progress=show_progress,
    )


def setup_context(model, tokenizer, setup: CompareSetup) -> str:
    """Everything the records depend on but the SAE (SAE records carry its fingerprint), so gradient
    methods can run before the SAE exists and the SAE methods join the same folder later."""
    config = setup.config
    return json_fingerprint(
        {
            "model": model_identity(model)["fingerprint"],
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "forget": text_fingerprint(setup.forget_docs),
            "retain": text_fingerprint(setup.retain_docs),
            "heldout": {k: text_fingerprint(v) for k, v in setup.heldout.items()},
            "sets": {g: {n: items_fingerprint(v) for n, v in s.items()} for g, s in setup.sets.items()},
            "settings": config.context_settings(),
        }
    )

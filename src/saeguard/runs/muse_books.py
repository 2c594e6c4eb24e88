"""MUSE Books, offline: DSG and the gradient baselines side by side (the DSG paper's Table 2 layout).

Forget = one Austen novel's train paragraphs, retain = the other five novels' train paragraphs,
holdout = the novel's held-out paragraphs (``eval.muse_data.books_corpora``). The original model,
DSG (a guard fitted on forget/retain, or one given) and each gradient method (trained on a
copy of the model with :func:`saeguard.baselines.unlearn`) are measured by the same
:func:`~saeguard.eval.muse.muse_metrics` on the same data. Writes ``muse.json`` and
``index.html`` (the shared report template) into the output folder, atomically.

No model that never saw the novel exists offline, so PrivLeak is the raw Min-K%++ AUC of forget
vs holdout paragraphs. Both come from the same novel, which pretraining saw alike, so the
original model sits near 0.5; below 0.5 means the unlearned paragraphs now look *less* familiar
than unseen ones (MUSE's over-unlearning), above 0.5 that they still look familiar.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from saeguard.baselines import DEFAULT_MODEL_RMU, TrainConfig, get, unlearn
from saeguard.config import FitConfig, preset
from saeguard.core.guardrail import Guardrail
from saeguard.data.corpora import AUSTEN_BOOKS
from saeguard.errors import require
from saeguard.eval.muse import MuseConfig, MuseMetrics, muse_metrics
from saeguard.eval.muse_data import MuseData, books_corpora, muse_data
from saeguard.hf.fingerprint import model_identity
from saeguard.io import staged_folder, to_jsonable, write_json
from saeguard.report import Page, Sample, Section, Table, write_page

RESULT_FILE = "muse.json"
INDEX_FILE = "index.html"
ORIGINAL = "original"
GRADIENT_METHODS = ("ga", "graddiff", "npo", "rmu")
#: Per-method settings beyond ``BooksConfig.train`` (the tuned points of docs/compare.md).
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "graddiff": {"retain_weight": 1.0},
    "npo": {"beta": 0.1, "retain_weight": 1.0, "retain_loss": "nll"},
    "rmu": {name: DEFAULT_MODEL_RMU[name] for name in ("layer", "steering_coeff", "alpha")},
}
#: Per-method training beyond ``BooksConfig.train``: RMU unlearns only at its tuned rate and length
#: (at the shared lr 5e-5 for 40 steps its MUSE row equalled the original model's).
METHOD_TRAIN: dict[str, dict[str, Any]] = {
    "rmu": {name: DEFAULT_MODEL_RMU[name] for name in ("learning_rate", "steps")},
}


@dataclass
class BooksConfig:
    """The Books run: which novel is forgotten, which methods run, their settings, the metric sizes."""

    book: str = "prideprejudice"
    methods: tuple[str, ...] = ("dsg", *GRADIENT_METHODS)
    muse: MuseConfig = field(default_factory=MuseConfig)
    fit: FitConfig = field(default_factory=lambda: preset("demo"))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(learning_rate=5e-5, steps=40, batch_size=4, seq_len=128)
    )
    retain_documents: int = 1500  # retain paragraphs sampled for fitting and unlearning
    seed: int = 0

    def check(self) -> None:
        """Raises SaeguardError for an unknown method (before any model work)."""
        for method in self.methods:
            if method != "dsg":
                get(method)


def books_config(book: str, samples: int | None = None) -> BooksConfig:
    """The default Books run forgetting ``book``; ``samples`` caps every metric's sample count.

    Raises:
        SaeguardError: an unknown novel (the message lists them) or ``samples`` < 2.
    """
    name = book.removeprefix("austen:")
    require(name in AUSTEN_BOOKS, f"unknown Austen novel {book!r}: use one of {', '.join(AUSTEN_BOOKS)}")
    config = BooksConfig(book=name)
    if samples is not None:
        require(samples >= 2, f"--limit must be at least 2 samples per metric, got {samples}")
        sizes = dataclasses.replace(
            config.muse.sizes, verbmem_samples=samples, knowmem_questions=samples, privleak_samples=samples
        )
        config.muse = dataclasses.replace(config.muse, sizes=sizes)
    return config


@dataclass
class BooksRow:
    """One method's metrics and what it cost."""

    method: str
    metrics: MuseMetrics
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class BooksResult:
    """Every method on the same data; ``privleak_reference`` is None (no retrained model offline)."""

    config: BooksConfig
    model: dict[str, str]
    rows: list[BooksRow]
    passages: list[tuple[str, str]]
    privleak_reference: float | None = None
    seconds: float = 0.0
    kind: str = "saeguard-muse-books"
    version: int = 1


def run_books(
    model: nn.Module,
    tokenizer: Any,
    config: BooksConfig | None = None,
    *,
    sae: Any = None,
    guard: Guardrail | None = None,
    output: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> BooksResult:
    """The original model, DSG and the gradient baselines on MUSE Books; ``model`` itself is never trained.

    Args:
        sae: the SAE DSG is fitted with (a SAELens folder, ``release:sae_id`` or SAE), unless ``guard``.
        guard: a guard already fitted to forget the book (skips the fit).
        output: folder for ``muse.json`` and ``index.html`` (replaced if it holds an earlier run).

    Raises:
        SaeguardError: an unknown book or method, or DSG asked for without ``sae`` or ``guard``.
    """
    config = config or BooksConfig()
    config.check()
    require(
        "dsg" not in config.methods or sae is not None or guard is not None,
        "DSG needs an SAE to fit with or a fitted guard: pass sae=... or guard=...",
    )
    started = time.perf_counter()
    corpora = books_corpora(config.book)
    rng = random.Random(config.seed)
    retain = rng.sample(corpora["retain"], min(config.retain_documents, len(corpora["retain"])))
    data = muse_data(
        tokenizer,
        forget=corpora["forget"],
        retain=retain,
        holdout=corpora["holdout"],
        sizes=config.muse.sizes,
    )
    rows = [_row(ORIGINAL, lambda: muse_metrics(model, tokenizer, data, config=config.muse), log)]
    for method in config.methods:
        if method == "dsg":
            rows.append(_dsg(model, tokenizer, data, config, corpora["forget"], retain, sae, guard, log))
        else:
            rows.append(_gradient(model, tokenizer, data, config, method, corpora["forget"], retain, log))
    result = BooksResult(
        config=config,
        model=model_identity(model),
        rows=rows,
        passages=data.passages,
        seconds=time.perf_counter() - started,
    )
    if output is not None:
        write_books(result, output)
    return result


def _row(
    method: str, measure: Callable[[], MuseMetrics], log: Callable[[str], None], **settings: Any
) -> BooksRow:
    began = time.perf_counter()
    metrics = measure()
    row = BooksRow(method, metrics, time.perf_counter() - began, settings)
    log(
        f"{method}: VerbMem {metrics.verbmem:.3f}, KnowMem forget {metrics.knowmem_forget.accuracy:.3f} "
        f"retain {metrics.knowmem_retain.accuracy:.3f}, PrivLeak AUC {metrics.privleak_auc:.3f}"
    )
    return row


def _dsg(model, tokenizer, data: MuseData, config: BooksConfig, forget, retain, sae, guard, log) -> BooksRow:
    began = time.perf_counter()
    if guard is None:
        guard = Guardrail.fit(
            model, tokenizer, sae, forget=forget, retain=retain, config=config.fit, show_progress=False
        )
    fit_seconds = time.perf_counter() - began
    row = _row("dsg", lambda: muse_metrics(model, tokenizer, data, guard=guard, config=config.muse), log)
    row.seconds += fit_seconds
    row.settings = guard.summary()
    return row


def gradient_config(config: BooksConfig, method: str) -> Any:
    """The method config a Books run trains ``method`` with: the shared training, then its own settings.

    Raises:
        SaeguardError: an unknown method.
    """
    train = dataclasses.replace(config.train, seed=config.seed, **METHOD_TRAIN.get(method, {}))
    return get(method).config(train=train, **METHOD_SETTINGS.get(method, {}))


def _gradient(
    model, tokenizer, data: MuseData, config: BooksConfig, method: str, forget, retain, log
) -> BooksRow:
    method_config = gradient_config(config, method)
    began = time.perf_counter()
    device = next(model.parameters()).device
    trained, _ = unlearn(copy.deepcopy(model), tokenizer, method, forget, retain, method_config)
    trained.to(device).eval()
    train_seconds = time.perf_counter() - began
    row = _row(
        method,
        lambda: muse_metrics(trained, tokenizer, data, config=config.muse, fluency_model=model),
        log,
        **to_jsonable(method_config),
    )
    row.seconds += train_seconds
    return row  # the trained copy is dropped here


# -- the report -------------------------------------------------------------------------------------
def _cell(value: float | None, n: int | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + ("" if n is None else f" (n={n})")


def books_table(result: BooksResult) -> Table:
    """The Table 2 layout: one row per method, MUSE's four criteria, then fluency and cost."""
    header = ["method", "VerbMem forget ↓", "KnowMem forget ↓", "KnowMem retain ↑", "4-way forget ↓"]
    header += ["4-way retain ↑", "PrivLeak AUC", "PrivLeak ↔0", "fluency ppl", "distinct-2", "seconds"]
    rows = []
    for row in result.rows:
        m = row.metrics
        rows.append(
            [
                row.method,
                _cell(m.verbmem, m.verbmem_samples),
                _cell(m.knowmem_forget.accuracy, m.knowmem_forget.questions),
                _cell(m.knowmem_retain.accuracy, m.knowmem_retain.questions),
                _cell(m.knowmem_forget.choice_accuracy, m.knowmem_forget.choice_questions),
                _cell(m.knowmem_retain.choice_accuracy, m.knowmem_retain.choice_questions),
                _cell(m.privleak_auc, m.privleak_samples),
                _cell(m.privleak),
                f"{m.fluency.perplexity:.2f}",
                f"{m.fluency.distinct_2:.3f}",
                f"{row.seconds:.0f}",
            ]
        )
    return Table(
        header,
        rows,
        caption="VerbMem: ROUGE-L F1 of greedy continuations of forget passages; KnowMem: exact match of the "
        "generated name (few-shot cloze); 4-way: the true name is the likeliest of four names (chance 0.25); "
        "PrivLeak AUC: Min-K%++ forget vs holdout (raw: no retrained reference offline, 0.5 = as unseen); "
        "fluency: perplexity of the VerbMem continuations under the original model. n = samples.",
    )


def books_page(result: BooksResult) -> Page:
    """The page: the table, the setting, and the first passages' continuations per method."""
    config, sizes = result.config, result.config.muse.sizes
    setting = (
        f"Forget: the train paragraphs of Austen's {config.book}; retain: {config.retain_documents} train "
        f"paragraphs of the other five novels; holdout: {config.book}'s held-out paragraphs. VerbMem prompts "
        f"are {sizes.prefix_tokens} tokens, continuations {sizes.continuation_tokens}; KnowMem asks "
        f"{sizes.knowmem_questions} cloze questions per side with {sizes.knowmem_shots} shots; "
        f"Min-K%++ uses k = {config.muse.min_k:g}."
    )
    samples = [
        Sample(
            f"Passage {i + 1}",
            [("prefix", prefix), ("true continuation", truth)]
            + [(row.method, row.metrics.continuations[i]) for row in result.rows],
        )
        for i, (prefix, truth) in enumerate(result.passages[:3])
    ]
    return Page(
        title=f"MUSE Books: forgetting {config.book} in {result.model.get('name', 'the model')}",
        summary="Verbatim and knowledge memorisation of the forgotten novel, knowledge of the kept ones, "
        "membership leakage and the fluency of what each method generates, on the same data.",
        notes=[setting],
        sections=[
            Section("The Books table", blocks=[books_table(result)]),
            Section("Continuations of forget passages", blocks=samples),
        ],
    )


def write_books(result: BooksResult, output: str | Path) -> Path:
    """Write ``muse.json`` and ``index.html`` into ``output``; returns the page's path.

    Raises:
        SaeguardError: ``output`` holds something other than an earlier Books run.
    """
    output = Path(output).expanduser()
    with staged_folder(output, replace=lambda folder: (folder / RESULT_FILE).is_file()) as staging:
        write_json(staging / RESULT_FILE, to_jsonable(result))
        write_page(books_page(result), staging / INDEX_FILE)
    return output / INDEX_FILE

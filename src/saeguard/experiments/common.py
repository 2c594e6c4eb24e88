"""What every experiment shares: its settings, its records, and one run's setup from start to grid.

An experiment module defines its settings (``validate()``, ``needs_sae``, ``fit``, ``eval``),
its grid points and a :class:`Record` subclass, then runs through one :class:`Setup`:
``Setup.open`` validates, loads the SAE, the documents and the known question sets
(``experiments.harness``) and opens the resumable records; ``Setup.statistics`` /
``Setup.unlearned`` fit guards and train baselines; ``Setup.grid`` runs the points
(``runs.grid``); ``experiments.report.finish`` writes the result and the report.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from saeguard.baselines import DEFAULT_MODEL_RMU, TrainConfig, grid_configs, unlearn
from saeguard.config import FitConfig, preset
from saeguard.core.fit import FitInputs, corpus_statistics, fit_from_statistics, prepare_fit
from saeguard.core.fit_inputs import lengths_within
from saeguard.core.guardrail import Guardrail
from saeguard.core.sae import check_sae_width, load_sae, sae_fingerprint
from saeguard.core.statistics import FeatureStatistics
from saeguard.errors import require
from saeguard.experiments.harness import EvalSettings, Harness, Scores, scores_or_none
from saeguard.experiments.settings import settings_dict
from saeguard.hf.layers import max_positions, model_device
from saeguard.io import cache_root, json_fingerprint, text_fingerprint
from saeguard.runs.compare_setup import _documents
from saeguard.runs.grid import GridCounts, GridPoint, RecordFile, run_grid

CHANCE = 0.25  # four options
RECORDS_FILE = "records.jsonl"
R = TypeVar("R", bound="Record")
P = TypeVar("P", bound=GridPoint)


def experiment_fit(**changes: Any) -> FitConfig:
    """The experiments' fit: ``preset("demo")`` (the README's setting) with fewer statistics chunks."""
    return replace(
        preset("demo"), **({"max_forget_chunks": 200, "max_retain_chunks": 400} | changes)
    ).validate()


def quick_fit(**changes: Any) -> FitConfig:
    """``--quick``: 64 forget and 128 retain chunks, 128 calibration prompts."""
    return experiment_fit(max_forget_chunks=64, max_retain_chunks=128, calibration_size=128, **changes)


#: The RMU configuration that unlearned on the default model in docs/compare.md (forget 0.47,
#: utility 1.0 on known items; the same settings at lr 5e-5 and 60 steps did nothing).
RMU_SETTINGS: dict[str, Any] = dict(DEFAULT_MODEL_RMU)  # RMU as it unlearned in docs/compare.md
QUICK_EVAL = EvalSettings(mcq_limit=40)  # --quick: 40 questions per set before the known filter


@dataclass(kw_only=True)
class Record:
    """What every experiment's record of one grid point carries besides the point's own fields.

    Subclasses add the point's fields (same names as the point's) and set ``kind``;
    :meth:`of` builds one from a point, :meth:`from_dict` reads one back from ``records.jsonl``.
    """

    key: str
    context: str  # the run's fingerprint (``run_context``)
    scores: Scores | None = None  # None: the point failed
    error: str | None = None  # the one-line SaeguardError that failed the point
    seconds: float = 0.0
    kind: str = "saeguard-experiment-record"
    version: int = 1

    @classmethod
    def of(cls: type[R], point: Any, context: str, **values: Any) -> R:
        """The record of ``point`` (a dataclass whose fields the record shares) with ``values`` set."""
        return cls(key=point.key, context=context, **(asdict(point) | values))

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """A record from its JSON object (``TypeError``/``KeyError``: not a record of this kind)."""
        return cls(**cls.parse(dict(data)))

    @classmethod
    def parse(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The JSON fields as constructor values: nested objects back to their types."""
        return data | {"scores": scores_or_none(data.get("scores"))}


def load_documents(specs: Sequence[str], split: str, *, role: str, seed: int) -> list[str]:
    """Documents of corpora (built-in names or files), shuffled with ``seed`` (as the comparison does).

    Raises:
        SaeguardError: the corpora have no documents of ``split``.
    """
    return _documents(list(specs), split, role, seed)


@dataclass
class Statistics:
    """The validated inputs and per-corpus statistics of one fit: many guards come from one pass."""

    inputs: FitInputs
    forget: FeatureStatistics
    retain: FeatureStatistics

    @classmethod
    def compute(
        cls,
        model: nn.Module,
        tokenizer: Any,
        sae: Any,
        forget: Sequence[str],
        retain: Sequence[str],
        fit: FitConfig,
        *,
        cache_dir: str | Path | None = None,
        show_progress: bool = True,
    ) -> Statistics:
        """Check the inputs (``prepare_fit``) and collect both corpora's statistics (cached on disk).

        Raises:
            SaeguardError: inputs ``prepare_fit`` refuses (empty corpora, a layer the SAE does not read).
        """
        inputs = prepare_fit(model, tokenizer, sae, list(forget), list(retain), fit)
        cache = cache_root(cache_dir)
        forget_stats = corpus_statistics(inputs, "forget", fit, cache=cache, show_progress=show_progress)
        retain_stats = corpus_statistics(inputs, "retain", fit, cache=cache, show_progress=show_progress)
        return cls(inputs, forget_stats, retain_stats)

    def with_forget(
        self, forget: Sequence[str], fit: FitConfig, *, cache_dir: str | Path | None, show_progress: bool
    ) -> Statistics:
        """The same fit on other forget documents: their statistics, this retain pass reused."""
        inputs = replace(self.inputs, forget_docs=list(forget))
        stats = corpus_statistics(
            inputs, "forget", fit, cache=cache_root(cache_dir), show_progress=show_progress
        )
        return Statistics(inputs, stats, self.retain)

    def guard(self, fit: FitConfig, *, show_progress: bool = False) -> Guardrail:
        """Selection and calibration for ``fit`` (``core.fit.fit_from_statistics``)."""
        result = fit_from_statistics(self.inputs, self.forget, self.retain, fit, show_progress=show_progress)
        return Guardrail.from_result(result)


def run_context(
    experiment: str, harness: Harness, sae: Any, config: Any, documents: Mapping[str, list[str]]
) -> str:
    """Fingerprint of everything a run's records depend on; a resume refuses other setups."""
    return json_fingerprint(
        {
            "experiment": experiment,
            "harness": harness.fingerprint(),
            "sae": sae_fingerprint(sae) if sae is not None else None,
            "documents": {role: text_fingerprint(docs) for role, docs in documents.items()},
            "config": settings_dict(config),
        }
    )


@dataclass
class Setup:
    """One experiment run: model, SAE, documents, harness and records, made once by :meth:`open`."""

    name: str  # the experiment ("sequential"...): records' context, messages, progress bars
    model: nn.Module
    tokenizer: Any
    sae_spec: Any  # what the caller passed (folder, release id), for the provenance
    sae: Any  # the loaded SAE; None for a run without DSG
    config: Any  # the experiment's settings
    harness: Harness
    documents: dict[str, list[str]]  # role -> shuffled documents
    context: str
    record: type[Record]  # the experiment's record class
    records: RecordFile[Any]
    output: Path
    cache_dir: str | Path | None
    show_progress: bool
    say: Callable[[str], None]
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def open(
        cls,
        name: str,
        model: nn.Module,
        tokenizer: Any,
        sae: Any,
        config: Any,
        output: str | Path,
        *,
        sets: Sequence[str],
        documents: Mapping[str, tuple[Sequence[str], str]],
        record: type[Record],
        cache_dir: str | Path | None = None,
        show_progress: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> Setup:
        """Validate ``config``, load the SAE and ``documents``, build the harness on ``sets``, open records.

        ``documents`` maps a role to (corpus specs, split); each is loaded shuffled with
        ``config.fit.seed`` and the role. Everything that can be wrong with the input fails
        here, before any statistics or training.

        Raises:
            SaeguardError: bad settings, no SAE where ``config.needs_sae``, a corpus without
                documents, an unreadable question set, or ``output`` holding another setup's records.
        """
        started = time.perf_counter()
        config.validate()
        require(
            sae is not None or not config.needs_sae, f"the {name} experiment needs an SAE: pass --sae DIR"
        )
        say = log or (lambda _line: None)
        # the demo preset's 2,000-token calibration runs and answers do not fit a short-context model
        config.fit, notes = lengths_within(config.fit, max_positions(model))
        for line in notes:
            say(f"note: lowered to fit the model: {line}")
        loaded = load_sae(sae) if sae is not None else None
        if loaded is not None:
            check_sae_width(loaded, model)  # before any point runs, not once per point
        seed = config.fit.seed
        docs = {
            role: load_documents(s, split, role=role, seed=seed) for role, (s, split) in documents.items()
        }
        say("loading question sets and known items")
        harness = Harness.build(
            model, tokenizer, sets, config.eval, cache_dir=cache_dir, show_progress=show_progress
        )
        context = run_context(name, harness, loaded, config, docs)
        out = Path(output).expanduser()
        records = RecordFile.open(
            out / RECORDS_FILE, record.from_dict, context=context, what=f"{name} experiment"
        )
        return cls(
            name, model, tokenizer, sae, loaded, config, harness, docs, context, record, records, out,
            cache_dir, show_progress, say, started,
        )  # fmt: skip

    def statistics(self, forget: Sequence[str], retain: Sequence[str]) -> Statistics:
        """Both corpora's statistics for the run's fit (cached on disk under ``cache_dir``)."""
        return Statistics.compute(
            self.model,
            self.tokenizer,
            self.sae,
            forget,
            retain,
            self.config.fit,
            cache_dir=self.cache_dir,
            show_progress=self.show_progress,
        )

    def unlearned(
        self,
        method: str,
        settings: Mapping[str, Any],
        forget: Sequence[str],
        retain: Sequence[str],
        *,
        start: nn.Module | None = None,
        seed: int | None = None,
    ) -> nn.Module:
        """``method`` (a gradient baseline) with ``settings`` trained on the texts, in eval mode.

        Trains a copy of the run's model, or ``start`` itself in place (a chain of requests);
        seeded with ``seed`` (default: the fit's), on the model's device.

        Raises:
            SaeguardError: an unknown method or setting, or a loss that is no longer finite.
        """
        seed = self.config.fit.seed if seed is None else seed
        base = TrainConfig(seed=seed, device=train_device(self.model))
        config = grid_configs(method, {k: [v] for k, v in settings.items()}, base=base)[0]
        source = start if start is not None else copy.deepcopy(self.model)
        trained, _ = unlearn(source, self.tokenizer, method, list(forget), list(retain), config)
        return trained.eval()

    def grid(
        self,
        points: Sequence[P],
        *,
        evaluate: Callable[[P, Any], Record],
        failed: Callable[[P, str], Record] | None = None,
        prepare: Callable[[list[P]], Any] | None = None,
        group: Callable[[P], Hashable] | None = None,
    ) -> GridCounts:
        """Every pending point through ``runs.grid.run_grid``; each record timed unless it timed itself.

        ``failed`` defaults to the run's record of the point with the error set.
        """

        def timed(point: P, prepared: Any) -> Record:
            began = time.perf_counter()
            record = evaluate(point, prepared)
            record.seconds = record.seconds or time.perf_counter() - began
            return record

        return run_grid(
            self.records,
            points,
            evaluate=timed,
            failed=failed or (lambda point, error: self.record.of(point, self.context, error=error)),
            prepare=prepare,
            group=group,
            description=self.name,
            show_progress=self.show_progress,
        )

    def ordered(self, points: Sequence[Any]) -> list[Any]:
        """The records of ``points``, in their order (after :meth:`grid`, every one exists)."""
        return [self.records.done[p.key] for p in points]


def train_device(model: nn.Module) -> str:
    """Where gradient methods train: the model's own device."""
    return str(model_device(model))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation; (nan, nan) for no values."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))

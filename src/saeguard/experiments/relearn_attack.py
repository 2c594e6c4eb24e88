"""The relearning attack's machinery: the fine-tuning run with checkpoints, and what each measures.

One fine-tuning run per (start model, learning rate) through the baselines' training loop
(``baselines.training.train_loop``) with a plain next-token loss on forget text; the forget
batch stream calls back before serving step s, so the weights are measured after exactly s
updates without a second loop. Each checkpoint records the harness's scores, the held-out
forget NLL and the drift of the guard layer's residual from the original weights.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from saeguard.baselines import TrainConfig
from saeguard.baselines.likelihood import mean_nll
from saeguard.baselines.training import make_cyclers, prepare_trainable, seed_everything, train_loop
from saeguard.core.guardrail import Guardrail
from saeguard.core.hooks import GateHook
from saeguard.errors import require
from saeguard.experiments.common import Record, Setup, train_device
from saeguard.hf.corpus import TokenBatch
from saeguard.hf.layers import model_device, residual_at

if TYPE_CHECKING:
    from saeguard.experiments.relearn import RelearnConfig

VARIANTS = ("unguarded", "test-time-dsg", "train-time-dsg", "rmu")
#: Which fine-tuning run measures each variant: the unguarded and test-time rows share one.
RUN_OF = {"unguarded": "plain", "test-time-dsg": "plain", "train-time-dsg": "train-time", "rmu": "rmu"}


@dataclass(frozen=True)
class RelearnPoint:
    variant: str
    learning_rate: float
    step: int

    @property
    def key(self) -> str:
        return f"{self.variant}:lr={self.learning_rate:g},step={self.step}"


@dataclass
class Drift:
    """The residual at the guard's layer on held-out forget tokens, fine-tuned vs original weights."""

    cosine: float  # mean per-token cosine similarity
    norm_ratio: float  # mean per-token ||h_tuned|| / ||h_original||
    latent_activation_ratio: float  # selected latents' summed activation, tuned / original
    firing_overlap: float  # Jaccard of the tokens where some selected latent fires


@dataclass(kw_only=True)
class RelearnRecord(Record):
    """One variant at one checkpoint of one learning rate."""

    variant: str
    learning_rate: float
    step: int
    forget_nll: float | None = None  # held-out forget text, the model without any guard
    drift: Drift | None = None
    kind: str = "saeguard-relearn-record"

    @classmethod
    def parse(cls, data: dict[str, Any]) -> dict[str, Any]:
        drift = data.get("drift")
        return super().parse(data) | {"drift": Drift(**drift) if drift else None}


def relearn_loss(
    model: nn.Module, forget: TokenBatch, _retain: TokenBatch
) -> tuple[torch.Tensor, dict[str, float]]:
    """The attack's loss: plain next-token NLL of the forget batch (the retain batch is unused)."""
    nll = mean_nll(model, forget)
    return nll, {"forget_nll": float(nll.detach())}


class CheckpointStream(Iterator[TokenBatch]):
    """Batches for ``train_loop`` that call ``at_step(s)`` before serving step s's batch, s in ``steps``.

    ``train_loop`` draws one batch per step after the previous optimiser step, so the
    callback sees the weights after exactly s updates.
    """

    def __init__(
        self, batches: Iterator[TokenBatch], steps: set[int], at_step: Callable[[int], None]
    ) -> None:
        self.batches, self.steps, self.at_step, self.served = batches, steps, at_step, 0

    def __next__(self) -> TokenBatch:
        if self.served in self.steps:
            self.at_step(self.served)
        self.served += 1
        return next(self.batches)


@dataclass
class Attack:
    """One relearning experiment's setup, guard and held-out batches; ``prepare`` runs one group."""

    setup: Setup
    config: RelearnConfig
    guard: Guardrail | None  # fitted on the original weights
    heldout: list[TokenBatch]  # held-out forget chunks for the NLL and the drift
    reference: list[torch.Tensor] = field(default_factory=list)  # original residuals on ``heldout``
    rmu_model: nn.Module | None = None

    def start_model(self, run: str) -> nn.Module:
        if run != "rmu":
            return self.setup.model
        if self.rmu_model is None:
            self.setup.say("unlearning with RMU before the attack")
            docs = self.setup.documents
            self.rmu_model = self.setup.unlearned("rmu", self.config.rmu, docs["forget"], docs["retain"])
        return self.rmu_model

    def prepare(self, members: list[RelearnPoint]) -> dict[str, RelearnRecord]:
        """One fine-tuning run for the group's variants; every wanted checkpoint measured on the way."""
        run, rate = RUN_OF[members[0].variant], members[0].learning_rate
        wanted = {(p.variant, p.step) for p in members}
        steps = max(p.step for p in members)
        train = replace(
            TrainConfig(seed=self.config.fit.seed, device=train_device(self.setup.model)),
            **(self.config.train | {"learning_rate": rate}),
        )
        train = replace(train, steps=max(steps, 1)).validate()
        seed_everything(train.seed)
        tuned = copy.deepcopy(self.start_model(run)).to(train.torch_device(), train.torch_dtype())
        docs = self.setup.documents
        relearn = docs.get("relearn", docs["forget"])  # the fine-tuning text: the forget text by default
        forget_batches, retain_batches = make_cyclers(self.setup.tokenizer, relearn, docs["retain"], train)
        tuned, params = prepare_trainable(tuned, train)
        hooks: list[GateHook] = []
        records: dict[str, RelearnRecord] = {}

        def checkpoint(step: int) -> None:
            for hook in hooks:
                hook.detach()
            hooks.clear()
            for variant in (v for v in self.config.variants if RUN_OF[v] == run and (v, step) in wanted):
                point = RelearnPoint(variant, rate, step)
                self.setup.say(f"{point.key}: measuring")
                records[point.key] = self.measure(point, tuned)
            if run == "train-time" and self.guard is not None:
                hooks.append(self.guard.attach(tuned))

        self.setup.say(f"{run} fine-tuning at lr {rate:g} for {steps} steps")
        stream = CheckpointStream(forget_batches, {s for _, s in wanted}, checkpoint)
        try:
            if steps == 0:  # only the start is wanted (a resumed run)
                checkpoint(0)
                return records
            if run == "train-time" and self.guard is not None and 0 not in {s for _, s in wanted}:
                hooks.append(self.guard.attach(tuned))
            train_loop(tuned, params, stream, retain_batches, relearn_loss, train, method="relearn")
            checkpoint(steps)
        finally:
            for hook in hooks:
                hook.detach()
        return records

    def measure(self, point: RelearnPoint, tuned: nn.Module) -> RelearnRecord:
        started = time.perf_counter()
        guarded = point.variant in ("test-time-dsg", "train-time-dsg")
        require(not guarded or self.guard is not None, f"{point.variant} needs an SAE: pass one (--sae DIR)")
        guards = [self.guard] if guarded and self.guard is not None else []
        untouched = point.step == 0 and RUN_OF[point.variant] == "plain"  # the base weights: reuse its scores
        scores = self.setup.harness.score(
            guards, model=None if untouched else tuned, names=["dsg"] * len(guards)
        )
        return RelearnRecord.of(
            point,
            self.setup.context,
            scores=scores,
            forget_nll=self.nll(tuned),
            drift=self.drift(tuned),
            seconds=time.perf_counter() - started,
        )

    @torch.no_grad()
    def nll(self, model: nn.Module) -> float:
        device = model_device(model)
        moved = [
            TokenBatch(b.input_ids.to(device), b.attention_mask.to(device), b.counted.to(device))
            for b in self.heldout
        ]
        was_training = model.training
        model.eval()
        values = [(float(mean_nll(model, b)), int(b.counted[:, 1:].sum())) for b in moved]
        model.train(was_training)
        return sum(v * n for v, n in values) / max(1, sum(n for _, n in values))

    @torch.no_grad()
    def drift(self, model: nn.Module) -> Drift | None:
        if self.guard is None:
            return None
        device = model_device(model)
        latents = self.guard.latents.to(device)
        if not self.reference:
            self.reference = [self._residual(self.setup.model, b) for b in self.heldout]
        cosine = norm = before_act = after_act = 0.0
        both = either = tokens = 0
        for batch, original in zip(self.heldout, self.reference, strict=True):
            tuned = self._residual(model, batch)
            cosine += float(F.cosine_similarity(tuned, original, dim=-1).sum())
            norm += float((tuned.norm(dim=-1) / original.norm(dim=-1).clamp(min=1e-12)).sum())
            before, after = latents.activations(original.to(device)), latents.activations(tuned.to(device))
            before_act, after_act = before_act + float(before.sum()), after_act + float(after.sum())
            fired_before, fired_after = (before > 0).any(-1), (after > 0).any(-1)
            both += int((fired_before & fired_after).sum())
            either += int((fired_before | fired_after).sum())
            tokens += int(original.shape[0])
        tokens = max(tokens, 1)
        return Drift(
            cosine / tokens, norm / tokens, after_act / max(before_act, 1e-12), both / max(either, 1)
        )

    def _residual(self, model: nn.Module, batch: TokenBatch) -> torch.Tensor:
        """(counted tokens, d) float32 residual after the guard's layer."""
        assert self.guard is not None
        device = model_device(model)
        hidden = residual_at(
            model, self.guard.layer, batch.input_ids.to(device), batch.attention_mask.to(device)
        )
        return hidden[batch.counted.to(device)].float()

"""The one training loop every unlearning baseline shares.

Methods differ only in their loss and in which parameters they train, so the
loop (optimiser, batching, seeding, clipping, timing, memory) lives here once
and a method plugs in ``loss_fn(model, forget_batch, retain_batch)``. That way
a comparison between GA, NPO and RMU is never confounded by loop details.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, cast, get_args

import psutil
import torch
from torch import nn

from saeguard.config import check_field, type_hints
from saeguard.errors import SaeguardError, require
from saeguard.hf.corpus import (
    CorpusSpec,
    TokenBatch,
    counted_mask,
    iter_chunks,
    iter_documents,
    pad_batch,
    pad_token_id,
    special_token_ids,
)
from saeguard.progress import progress_bar

if TYPE_CHECKING:
    from peft import PeftModel

LossFn = Callable[[nn.Module, TokenBatch, TokenBatch], tuple[torch.Tensor, dict[str, float]]]
"""``loss_fn(model, forget_batch, retain_batch) -> (scalar loss to minimise, {name: value} logs)``."""

TrainDtype = Literal["float32", "bfloat16", "float16"]
"""Dtype the weights are trained in; bfloat16 loses tiny AdamW updates, so float32 is the default."""
_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in get_args(TrainDtype)}

SettingsT = TypeVar("SettingsT", bound="CheckedSettings")


class CheckedSettings:
    """Mixin for settings dataclasses: :meth:`validate` checks every field from its declaration.

    Types and ``Literal`` choices come from the type hints, ranges from the
    ``min``/``max``/``min_exclusive`` field metadata, all through
    :func:`saeguard.config.check_field` (the checker ``FitConfig`` uses), so no
    config repeats its choices in hand-written code. Nested settings validate too.
    """

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # every subclass is a dataclass

    def validate(self: SettingsT) -> SettingsT:
        """Check every field (and nested settings); return ``self``.

        Raises:
            SaeguardError: ``<field> must be ..., got <value>`` for the first bad field.
        """
        hints = type_hints(type(self))
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            check_field(spec, value, hints[spec.name])
            if isinstance(value, CheckedSettings):
                value.validate()
        return self


@dataclass
class TrainConfig(CheckedSettings):
    """Method-independent optimisation settings (the paper grids vary lr, batch and steps)."""

    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW step size", "min_exclusive": 0})
    steps: int = field(
        default=400, metadata={"help": "Optimiser steps (one forget + one retain batch each)", "min": 1}
    )
    batch_size: int = field(
        default=8, metadata={"help": "Sequences per forget batch and per retain batch", "min": 1}
    )
    seq_len: int = field(default=256, metadata={"help": "Tokens per training chunk", "min": 2})
    seed: int = field(
        default=0, metadata={"help": "Seeds batch order, torch RNGs and RMU's steering direction"}
    )
    use_lora: bool = field(
        default=False, metadata={"help": "Train LoRA adapters (peft) instead of the weights"}
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r", "min": 1})
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA scaling alpha (update scaled by alpha / r)"}
    )
    max_grad_norm: float | None = field(
        default=1.0,
        metadata={"help": "Clip the gradient norm to this; None = no clipping", "min_exclusive": 0},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay", "min": 0})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto (cuda when available)"})
    dtype: TrainDtype = field(default="float32", metadata={"help": "Dtype the weights are trained in"})
    progress: bool = field(default=False, metadata={"help": "Show a progress bar"})

    def torch_device(self) -> torch.device:
        """The device to train on (``auto`` = cuda when available, else cpu).

        Raises:
            SaeguardError: ``device`` is not a torch device name.
        """
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return torch.device(self.device)
        except RuntimeError:
            raise SaeguardError(f"unknown device {self.device!r}: use cpu, cuda, cuda:N or auto") from None

    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a torch dtype."""
        return _DTYPES[self.dtype]


@dataclass
class TrainResult:
    """What a run cost and how its losses moved; saved next to the weights as JSON."""

    method: str
    losses: list[float] = field(default_factory=list)
    logs: list[dict[str, float]] = field(default_factory=list)
    wall_seconds: float = 0.0
    seconds_per_step: float = 0.0
    step_seconds: list[float] = field(default_factory=list)  # first steps include warm-up
    peak_rss_mb: float = 0.0  # sampled after each forward and each optimiser step
    peak_cuda_mb: float = 0.0  # torch's peak allocation on the GPU, when training there
    trainable_params: int = 0
    forget_chunks: int = 0
    retain_chunks: int = 0


def seed_everything(seed: int) -> None:
    """Seed every RNG a run touches, so a seed names one exact run."""
    random.seed(seed)
    torch.manual_seed(seed)


class BatchCycler:
    """Endless padded batches cycling over a fixed list of token chunks, reshuffled per epoch."""

    def __init__(
        self,
        chunks: Sequence[Sequence[int]],
        batch_size: int,
        *,
        pad_id: int,
        special_ids: set[int],
        device: torch.device,
        seed: int,
    ) -> None:
        require(len(chunks) > 0, "a corpus produced no token chunks: give it some non-empty text")
        self.chunks = [list(c) for c in chunks]
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.special_ids = special_ids
        self.device = device
        self._rng = random.Random(seed)
        self._order: list[int] = []

    def _next_index(self) -> int:
        if not self._order:
            self._order = list(range(len(self.chunks)))
            self._rng.shuffle(self._order)
        return self._order.pop()

    def __iter__(self) -> Iterator[TokenBatch]:
        return self

    def __next__(self) -> TokenBatch:
        rows = [self.chunks[self._next_index()] for _ in range(self.batch_size)]
        ids, mask = pad_batch(rows, self.pad_id)
        counted = counted_mask(ids, mask, self.special_ids)
        return TokenBatch(ids.to(self.device), mask.to(self.device), counted.to(self.device))


def load_chunks(corpus: CorpusSpec, tokenizer, config: TrainConfig) -> list[list[int]]:
    """Token chunks of a corpus, reading no more than one run can use."""
    limit = config.steps * config.batch_size
    return list(iter_chunks(iter_documents(corpus), tokenizer, config.seq_len, max_chunks=limit))


def make_cyclers(
    tokenizer, forget: CorpusSpec, retain: CorpusSpec, config: TrainConfig
) -> tuple[BatchCycler, BatchCycler]:
    """Forget and retain batch cyclers on ``config``'s device, seeded ``seed`` and ``seed + 1``.

    Raises:
        SaeguardError: a corpus yields no token chunks, or ``config.device`` is unknown.
    """
    device = config.torch_device()
    specials = special_token_ids(tokenizer)
    pad = pad_token_id(tokenizer)
    cyclers = []
    for offset, corpus in enumerate((forget, retain)):
        chunks = load_chunks(corpus, tokenizer, config)
        cyclers.append(
            BatchCycler(
                chunks,
                config.batch_size,
                pad_id=pad,
                special_ids=specials,
                device=device,
                seed=config.seed + offset,
            )
        )
    return cyclers[0], cyclers[1]


def _linear_modules(model: nn.Module, under: Sequence[str] | None) -> dict[str, nn.Module]:
    """Linear/Conv1D layers (under ``under`` if given), never the output head."""
    from transformers.pytorch_utils import Conv1D

    get_head = getattr(model, "get_output_embeddings", None)  # transformers models only
    head = get_head() if get_head is not None else None
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)) or module is head:
            continue
        if under is None or any(name == p or name.startswith(p + ".") for p in under):
            found[name] = module
    return found


def prepare_trainable(
    model: nn.Module, config: TrainConfig, modules: Sequence[str] | None = None
) -> tuple[nn.Module, list[nn.Parameter]]:
    """Freeze all but what the method trains: ``modules`` (paths) or all; LoRA wraps them.

    With ``use_lora`` the model is wrapped by peft (all linear layers, or the
    linear layers under ``modules``) and only the adapters train.
    """
    model.requires_grad_(False)
    if config.use_lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise SaeguardError("use_lora needs peft: pip install 'saeguard[baselines]'") from None
        targets = _linear_modules(model, modules)
        require(bool(targets), f"no linear layers under {list(modules or [])} to put LoRA on")
        lora = LoraConfig(
            r=config.lora_rank,
            # peft annotates lora_alpha as int but only divides it by r; a float alpha works.
            lora_alpha=config.lora_alpha,  # type: ignore[arg-type]
            lora_dropout=0.0,
            target_modules=list(targets),
            # GPT-2 style Conv1D layers store weights transposed.
            fan_in_fan_out=all(type(m).__name__ == "Conv1D" for m in targets.values()),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    elif modules is None:
        model.requires_grad_(True)
    else:
        for path in modules:
            model.get_submodule(path).requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    require(bool(params), "nothing to train: the method selected no parameters")
    return model, params


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` is a peft model (False when peft is not installed)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


class Reference:
    """The model as it was before unlearning (NPO's log-ratio, KL and RMU's retain target).

    A LoRA run reuses the live model with adapters switched off, so no copy is
    held; a full fine-tune keeps a frozen deep copy.
    """

    def __init__(self, model: nn.Module) -> None:
        self._live = model
        self._toggle = is_lora(model)
        self._copy: nn.Module | None = None
        if not self._toggle:
            self._copy = copy.deepcopy(model).eval().requires_grad_(False)

    @contextmanager
    def active(self) -> Iterator[nn.Module]:
        """The reference model for the ``with`` block, with gradients off."""
        if self._toggle:
            with cast("PeftModel", self._live).disable_adapter(), torch.no_grad():
                yield self._live
        else:
            assert self._copy is not None
            with torch.no_grad():
                yield self._copy


def _rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def train_loop(
    model: nn.Module,
    params: list[nn.Parameter],
    forget: Iterator[TokenBatch],
    retain: Iterator[TokenBatch],
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    method: str,
) -> TrainResult:
    """Run ``config.steps`` AdamW steps on ``loss_fn``; stop with an error if the loss blows up.

    The model stays in eval mode (no dropout), so the reference log-ratio is
    exactly zero at step 0 and a seed fixes the run.
    """
    model.eval()
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    result = TrainResult(method=method, trainable_params=sum(p.numel() for p in params))
    process = psutil.Process()
    cuda = next(iter(params)).device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    peak = _rss_mb(process)
    start = time.perf_counter()
    with progress_bar(f"unlearning ({method})", total=config.steps, enabled=config.progress) as advance:
        for step in range(config.steps):
            tick = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss, logs = loss_fn(model, next(forget), next(retain))
            peak = max(peak, _rss_mb(process))
            value = float(loss.detach())
            if not torch.isfinite(loss.detach()):
                raise SaeguardError(
                    f"{method} loss became {value} at step {step}: lower learning_rate or set max_grad_norm"
                )
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            peak = max(peak, _rss_mb(process))
            result.step_seconds.append(time.perf_counter() - tick)
            result.losses.append(value)
            result.logs.append({k: float(v) for k, v in logs.items()})
            advance(1)
    optimizer.zero_grad(set_to_none=True)
    result.wall_seconds = time.perf_counter() - start
    result.seconds_per_step = result.wall_seconds / config.steps
    result.peak_rss_mb = peak
    if cuda:
        result.peak_cuda_mb = torch.cuda.max_memory_allocated() / 2**20
    return result

"""Run any lm-evaluation-harness task through a guarded model (needs ``pip install lm-eval``).

The model object itself is handed to lm-eval's ``HFLM`` (``pretrained=model``), and
the guard is applied for the duration of every request batch, so loglikelihood,
rolling-loglikelihood and generation tasks all see the guarded model.

Which tokens the gate reads (method.md §5): in a deployment the gate sees the
prompt, not the answer, so for ``loglikelihood`` requests it decides on the
context's non-special tokens and keeps that decision for the continuation (as
``evaluate_mcq`` does); padding never counts, so results do not depend on the
batch size. ``judge="request"`` decides on every token of the request instead
(``(context + continuation)[:-1]``, frozen): what a server sees when a client such
as lm-eval's ``local-completions`` sends context and continuation as one prompt
(docs/serving.md). ``loglikelihood_rolling`` (perplexity) judges the text as it goes,
like generation; ``generate_until`` goes through ``model.generate``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import nn

from saeguard.core.gate import token_scope
from saeguard.errors import SaeguardError, one_line, require
from saeguard.eval.common import guard_identity
from saeguard.hf.corpus import pad_batch
from saeguard.hf.fingerprint import model_identity
from saeguard.hf.layers import check_token_ids, max_positions, model_device
from saeguard.io import to_jsonable, write_json

if TYPE_CHECKING:
    from saeguard.core.guardrail import Guardrail

Judge = Literal["context", "request"]
"""Which tokens of a loglikelihood request the gate decides on: the context, or all of the request."""

_INSTALL = "install lm-eval (pip install 'saeguard[eval]' or pip install lm-eval) to run lm-eval tasks"


def _hflm_class():
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise SaeguardError(f"lm-eval is not installed: {_INSTALL}") from None
    return HFLM


def guarded_lm(
    model: nn.Module,
    tokenizer,
    guard: Guardrail | None = None,
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    judge: Judge = "context",
    **hflm_kwargs: Any,
):
    """An lm-eval ``HFLM`` over ``model`` whose requests run with ``guard`` attached.

    ``judge``: the tokens of a loglikelihood request the gate decides on (see :func:`score_requests`).

    Raises:
        SaeguardError: lm-eval is not installed, an unknown ``judge``, or a ``guard`` that cannot run
            on ``model`` (another width or layer count, a TopK guard read without its SAE).
    """
    _check_judge(judge)
    if guard is not None:  # checked here, not at lm-eval's first request
        guard.check_model(model, strict=False)
        guard.latents.check_runnable()
    hflm = _hflm_class()

    class GuardedHFLM(hflm):  # type: ignore[misc, valid-type]  # lm-eval is optional: imported at call time
        """HFLM that attaches a saeguard guard around each request batch."""

        def __init__(self) -> None:
            super().__init__(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=batch_size,
                max_length=max_length,
                **hflm_kwargs,
            )
            self.guard = guard
            self.freeze = True

        @contextmanager
        def guarded(self) -> Iterator[None]:
            with self.guard.attached(self.model) if self.guard is not None else nullcontext():
                yield

        def loglikelihood(self, requests, *args, **kwargs):
            with self.guarded():
                return super().loglikelihood(requests, *args, **kwargs)

        def loglikelihood_rolling(self, requests, *args, **kwargs):
            self.freeze = False
            try:
                with self.guarded():
                    return super().loglikelihood_rolling(requests, *args, **kwargs)
            finally:
                self.freeze = True

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            size = override_bs or (self.batch_size if isinstance(self.batch_size, int) else 8)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            scores = score_requests(
                self.model,
                [(r[1], r[2]) for r in requests],
                self.max_length,
                size,
                pad,
                freeze=self.freeze,
                judge=judge,
            )
            for request, answer in zip(requests, scores, strict=True):
                if request[0] is not None:
                    self.cache_hook.add_partial("loglikelihood", request[0], answer)
            return scores

        def generate_until(self, requests, *args, **kwargs):
            with self.guarded():
                return super().generate_until(requests, *args, **kwargs)

    return GuardedHFLM()


@torch.no_grad()
def score_requests(
    model: nn.Module,
    requests: Sequence[tuple[list[int], list[int]]],
    max_length: int,
    batch_size: int,
    pad_id: int,
    *,
    freeze: bool = True,
    judge: Judge = "context",
) -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), greedy?) per (context ids, continuation ids) request.

    Inputs are lm-eval's: ``(context + continuation)[-(max_length + 1):][:-1]``, right-padded
    with an attention mask. With ``judge="context"`` the gate counts the context's tokens only
    (``decision_end`` = context length); with ``judge="request"`` it counts every real token of
    that input and decides at its end (what a server judging a whole ``echo`` prompt does). With
    ``freeze`` the decision holds for the continuation.

    Raises:
        SaeguardError: an unknown ``judge``, or a request with no context or no continuation.
    """
    _check_judge(judge)
    require(
        isinstance(batch_size, int) and batch_size >= 1, f"batch_size must be at least 1, got {batch_size!r}"
    )
    limit = max_positions(model)
    require(
        isinstance(max_length, int) and max_length >= 1 and (limit is None or max_length <= limit),
        f"max_length {max_length!r} must be a positive number of tokens within the model's {limit} positions",
    )
    device = model_device(model)
    rows = []
    for context, continuation in requests:
        require(len(continuation) > 0, "an lm-eval request has an empty continuation")
        whole = (list(context) + list(continuation))[-(max_length + 1) :]
        require(len(whole) > len(continuation), "an lm-eval request has no context token: give it a context")
        check_token_ids(model, torch.tensor(whole), "an lm-eval request")
        rows.append((whole[:-1], len(whole) - len(continuation), list(continuation)))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out: list[tuple[float, bool] | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[start : start + batch_size]]
        ids, mask = pad_batch([r[0] for r in batch], pad_id)
        if judge == "request":
            end = torch.tensor([len(r[0]) for r in batch])
        else:
            end = torch.tensor([r[1] for r in batch])
        counted = (torch.arange(ids.shape[1]).unsqueeze(0) < end.unsqueeze(1)) & mask.bool()
        with token_scope(counted.to(device), end.to(device), freeze=freeze):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        log_probs = torch.log_softmax(logits, -1).cpu()
        for row, (index, (_, first, continuation)) in enumerate(
            zip(order[start : start + batch_size], batch, strict=True)
        ):
            positions = torch.arange(first - 1, first - 1 + len(continuation))
            target = torch.tensor(continuation)
            chosen = log_probs[row, positions].gather(-1, target.unsqueeze(-1)).squeeze(-1)
            greedy = bool((log_probs[row, positions].argmax(-1) == target).all())
            out[index] = (float(chosen.sum()), greedy)
    return [o for o in out if o is not None]


def _check_judge(judge: str) -> None:
    require(judge in get_args(Judge), f"unknown judge {judge!r}: use {' or '.join(get_args(Judge))}")


@dataclass
class LmEvalResult:
    """lm-eval's per-task metrics for one (optionally guarded) model, with the settings used."""

    tasks: list[str]
    model: dict[str, str]
    guard: dict[str, Any] | None
    settings: dict[str, Any]
    results: dict[str, dict[str, Any]]  # lm-eval's per-task metrics
    seconds: float = 0.0
    kind: str = "saeguard-lm-eval"
    version: int = 1

    def metric(self, task: str, name: str = "acc") -> float:
        """A metric of a task, whatever lm-eval's filter suffix (``acc,none``)."""
        values = self.results.get(task, {})
        for key, value in values.items():
            if key == name or key.startswith(name + ","):
                return float(value)
        raise SaeguardError(f"task {task!r} has no metric {name!r}: it has {sorted(values)}")

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON to ``path`` atomically; returns ``path``."""
        return write_json(path, self)


def run_lm_eval(
    model: nn.Module,
    tokenizer,
    tasks: Sequence[str],
    *,
    guard: Guardrail | None = None,
    include_path: str | Path | Sequence[str | Path] | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    apply_chat_template: bool = False,
    output: str | Path | None = None,
    **evaluate_kwargs: Any,
) -> LmEvalResult:
    """Run lm-eval ``tasks`` (names, or local task YAMLs found under ``include_path``)."""
    started = time.perf_counter()
    lm = guarded_lm(model, tokenizer, guard, batch_size=batch_size)
    import lm_eval
    from lm_eval.tasks import TaskManager

    paths = None
    if include_path is not None:
        items = [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
        paths = [str(Path(p).expanduser()) for p in items]
    manager = None
    if paths:  # indexing lm-eval's thousands of built-in tasks takes ~10 s: skip it when we can
        local = TaskManager(include_path=paths, include_defaults=False)
        manager = local if all(t in local.all_tasks for t in tasks) else None
    manager = manager or TaskManager(include_path=paths)
    try:
        raw = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            task_manager=manager,
            limit=limit,
            num_fewshot=num_fewshot,
            apply_chat_template=apply_chat_template,
            log_samples=False,
            **evaluate_kwargs,
        )
    except (KeyError, ValueError, FileNotFoundError, ConnectionError) as error:  # offline: ConnectionError
        raise SaeguardError(f"lm-eval could not run {list(tasks)}: {one_line(error)}") from None
    if raw is None:
        raise SaeguardError("lm-eval returned no results (non-zero rank?): run in a single process")
    result = LmEvalResult(
        tasks=list(tasks),
        model=model_identity(model),
        guard=guard_identity(guard),
        settings={
            "limit": limit,
            "num_fewshot": num_fewshot,
            "batch_size": batch_size,
            "apply_chat_template": apply_chat_template,
            "include_path": paths,
        },
        results=to_jsonable({k: dict(v) for k, v in raw["results"].items()}),
        seconds=time.perf_counter() - started,
    )
    if output is not None:
        result.save(output)
    return result


__all__ = ["LmEvalResult", "guarded_lm", "run_lm_eval"]

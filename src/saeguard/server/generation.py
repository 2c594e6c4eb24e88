"""One request on the guarded model: the guards it chose, the policy, streaming, echo scoring.

:func:`run_job` runs in a worker thread of the server's pool and enters each chosen guard's
``GateHook.session`` in that thread, so the guards apply to this request's forwards only and
each ``generate`` call has its own gate state (core/hooks.py): a request's decision and text
are the same alone or beside others. The gate judges the prompt's counted tokens
(``token_scope``: every user turn of a conversation) and the decision holds for every
generated token, streamed or not (method.md §3, "generation"). With the ``refuse`` policy a
flagged prompt stops the call right after its prompt forward, before any token is generated.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from saeguard.core.gate import GateRecord, token_scope
from saeguard.core.guardrail import Guardrail, row_decisions
from saeguard.core.hooks import GateHook
from saeguard.hf.layers import model_device
from saeguard.server.schemas import FinishReason, GuardReport
from saeguard.server.settings import Policy


@dataclass(frozen=True)
class Job:
    """One prompt to run: its ids, which of them the gate counts, the guards, the settings.

    Attributes:
        ids: the prompt's token ids (chat template included), one row.
        counted: per id, whether the gate reads it (the user's turns; specials never count).
        guards: ``(name, guard)`` in the order they apply.
        decision_end: where the prompt's decision is taken (default: after the last id).
        freeze: keep the prompt's decision for every later token (echo scoring).
        logprobs: None, or how many top alternatives to return per generated token.
        echo: also score the prompt's own tokens (completions with ``echo``).
    """

    ids: list[int]
    counted: list[bool]
    guards: tuple[tuple[str, Guardrail], ...]
    policy: Policy
    max_new_tokens: int
    decision_end: int | None = None
    freeze: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    echo: bool = False


@dataclass
class TokenScore:
    """A token's log-probability under the (guarded) model and the top alternatives (id, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Outcome:
    """What a job produced: the generated ids and text, why it stopped, each guard's decision."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    reports: list[GuardReport]
    refused: bool = False
    scores: list[TokenScore] | None = None  # per generated token, when logprobs were asked for
    prompt_scores: list[TokenScore | None] | None = None  # per prompt token (None for the first), echo


class _Refused(Exception):
    """Raised inside the prompt's forward when a guard flags it under the refuse policy."""


class _Cancelled(StoppingCriteria):
    """Stops generation once ``event`` is set (the client went away, or a stop string was streamed)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class _StopText(StoppingCriteria):
    """Stops once the generated text holds a stop string.

    Decodes the generated ids, so it works with any tokenizer (``generate(stop_strings=...)``
    fails on vocabularies without BPE-style word prefixes).
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _PromptWatch:
    """Collects each guard's prompt decision from its first record; acts once all guards decided."""

    def __init__(
        self,
        hooks: Sequence[tuple[str, GateHook]],
        on_decided: Callable[[list[GuardReport]], None] | None,
        refuse: bool,
    ) -> None:
        self.names = [name for name, _ in hooks]
        self.on_decided = on_decided
        self.refuse = refuse
        self.reports: dict[str, GuardReport] = {}
        for name, hook in hooks:
            hook.observers.append(self._observer(name))

    def _observer(self, name: str) -> Callable[[GateHook, GateRecord], None]:
        def observe(hook: GateHook, record: GateRecord) -> None:
            if name in self.reports or record.prompt_flagged is None:
                return
            self.reports[name] = GuardReport(
                name=name, rho=float(record.rho[0]), tau=hook.tau, flagged=bool(record.prompt_flagged[0])
            )
            if len(self.reports) == len(self.names):
                self.decided()

        return observe

    def decided(self) -> None:
        reports = [self.reports[name] for name in self.names]
        if self.on_decided is not None:
            self.on_decided(reports)
        if self.refuse and any(r.flagged for r in reports):
            raise _Refused


@contextmanager
def _applied(model: nn.Module, hooks: Sequence[tuple[str, GateHook]], job: Job) -> Iterator[None]:
    """The job's guards on this thread's forwards of ``model``, with its token scope, recording."""
    device = model_device(model)
    counted = torch.tensor([job.counted], dtype=torch.bool, device=device)
    end = None if job.decision_end is None else [job.decision_end]
    with ExitStack() as stack:
        for _, hook in hooks:
            stack.enter_context(hook.session(model))
        stack.enter_context(token_scope(counted, end, freeze=job.freeze))
        for _, hook in hooks:
            hook.reset()
            hook.recording = True
        try:
            yield
        finally:
            for _, hook in hooks:
                hook.reset()


def _reports(
    hooks: Sequence[tuple[str, GateHook]], records: dict[str, list[GateRecord]]
) -> list[GuardReport]:
    """Each guard's decision on the row, as :func:`row_decisions` reads ``Guardrail.generate``'s records."""
    reports = []
    for name, hook in hooks:
        decision = row_decisions(records[name])[0]
        reports.append(
            GuardReport(
                name=name,
                rho=decision.prompt_rho,
                tau=hook.tau,
                flagged=decision.prompt_flagged,
                flipped_at=decision.flipped_at,
            )
        )
    return reports


def _top(log_probs: torch.Tensor, token: int, k: int) -> TokenScore:
    """The score of ``token`` under one position's (V,) log-probabilities, with the top ``k``."""
    top: list[tuple[int, float]] = []
    if k > 0:
        values, indices = log_probs.topk(k)
        top = [(int(i), float(v)) for i, v in zip(indices, values, strict=True)]
    return TokenScore(token, float(log_probs[token]), top)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first occurrence of any stop string, and whether one occurred."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


class StopFilter:
    """Streams text while holding back what could be the start of a stop string (OpenAI's ``stop``)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, chunk: str) -> str:
        """The part of the text so far that can be sent now ('' after a stop string)."""
        if self.stopped:
            return ""
        self.text += chunk
        cut, self.stopped = cut_at_stop(self.text, self.stops)
        upto = len(cut) if self.stopped else max(len(self.text) - self.hold, self.sent)
        out, self.sent = self.text[self.sent : upto], upto
        return out

    def flush(self) -> str:
        """Whatever is held back, once the generation has ended."""
        if self.stopped:
            return ""
        out, self.sent = self.text[self.sent :], len(self.text)
        return out


def _eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}


@torch.no_grad()
def _score_prompt(
    model: nn.Module, hooks: Sequence[tuple[str, GateHook]], job: Job
) -> tuple[list[TokenScore | None], list[GuardReport]]:
    """Log-probability of each prompt token given the ones before it, under the job's guards."""
    device = model_device(model)
    with _applied(model, hooks, job):
        logits = model(input_ids=torch.tensor([job.ids], device=device)).logits[0].float()
        records = {name: list(hook.records) for name, hook in hooks}
    log_probs = torch.log_softmax(logits, -1).cpu()
    k = job.logprobs or 0
    scores: list[TokenScore | None] = [None]
    scores += [_top(log_probs[t - 1], job.ids[t], k) for t in range(1, len(job.ids))]
    return scores, _reports(hooks, records)


@torch.no_grad()
def run_job(
    model: nn.Module,
    tokenizer: Any,
    job: Job,
    *,
    refusal: str,
    streamer: Any = None,
    on_decided: Callable[[list[GuardReport]], None] | None = None,
    cancel: threading.Event | None = None,
) -> Outcome:
    """Run one prompt under its guards in the calling thread; see the module docstring.

    Args:
        refusal: the text a refused request gets (finish reason ``content_filter``).
        streamer: a ``transformers`` streamer (``TextIteratorStreamer``); ended in every case.
        on_decided: called (in this thread) with each guard's prompt decision once all decided,
            before the first token is generated.
        cancel: set it to stop generating (the client disconnected).

    Raises:
        SaeguardError: a problem ``generate`` reports in the request's settings.
    """
    hooks = [(name, guard.hook()) for name, guard in job.guards]
    refuse = job.policy == "refuse"
    try:
        prompt_scores = None
        if job.echo:
            prompt_scores, reports = _score_prompt(model, hooks, job)
            if on_decided is not None:
                on_decided(reports)
            if refuse and any(r.flagged for r in reports):
                return Outcome([], refusal, "content_filter", reports, refused=True)
            if job.max_new_tokens == 0:
                return Outcome([], "", "length", reports, prompt_scores=prompt_scores)
        watch = _PromptWatch(hooks, None if job.echo else on_decided, refuse)
        if not hooks:
            watch.decided()
        device = model_device(model)
        kwargs: dict[str, Any] = {
            "input_ids": torch.tensor([job.ids], device=device),
            "attention_mask": torch.ones(1, len(job.ids), dtype=torch.long, device=device),
            "max_new_tokens": job.max_new_tokens,
            "do_sample": job.temperature > 0,
            "pad_token_id": tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id,
            "return_dict_in_generate": True,
            "output_logits": job.logprobs is not None,
        }
        if job.temperature > 0:
            kwargs |= {"temperature": job.temperature, "top_p": job.top_p}
            if job.seed is not None:
                torch.manual_seed(job.seed)
        criteria: list[StoppingCriteria] = [] if cancel is None else [_Cancelled(cancel)]
        if job.stop:
            criteria.append(_StopText(tokenizer, job.stop, len(job.ids)))
        if criteria:
            kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        if streamer is not None:
            kwargs["streamer"] = streamer
        generate = cast(Callable[..., Any], model.generate)
        with _applied(model, hooks, job):
            try:
                output = generate(**kwargs)
            except _Refused:
                records = {name: list(hook.records) for name, hook in hooks}
                if streamer is not None:
                    streamer.end()
                return Outcome([], refusal, "content_filter", _reports(hooks, records), refused=True)
            records = {name: list(hook.records) for name, hook in hooks}
    except BaseException:
        if streamer is not None:
            streamer.end()
        raise
    generated = [int(t) for t in output.sequences[0, len(job.ids) :]]
    text, stopped = cut_at_stop(tokenizer.decode(generated, skip_special_tokens=True), job.stop)
    ended = bool(generated) and generated[-1] in _eos_ids(model, tokenizer)
    finish: FinishReason = (
        "length" if len(generated) >= job.max_new_tokens and not (stopped or ended) else "stop"
    )
    scores = None
    if job.logprobs is not None:
        log_probs = torch.log_softmax(torch.cat(list(output.logits)).float(), -1).cpu()
        scores = [_top(log_probs[i], token, job.logprobs) for i, token in enumerate(generated)]
    return Outcome(
        generated, text, finish, _reports(hooks, records), scores=scores, prompt_scores=prompt_scores
    )

"""What every request handler shares: the served model, its guards, the settings, API errors.

Which guards apply is chosen per request: a model alias (``default+bio``, ``default+none``)
or a ``guards`` list in the body; by default every loaded guard (or ``--default-guard``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from saeguard.core.guardrail import Guardrail
from saeguard.errors import SaeguardError, require
from saeguard.hf.layers import config_value, max_positions
from saeguard.server.schemas import ErrorBody, ErrorResponse
from saeguard.server.settings import NAME, ServerSettings

NO_GUARD = "none"
"""The alias for no guard at all: ``model="default+none"``."""


class ApiError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error body naming the field."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorResponse(error=ErrorBody(message=message, type=kind, param=param, code=code))


@dataclass
class Served:
    """The model, its tokenizer and guards, and the settings: one per app."""

    model: nn.Module
    tokenizer: Any
    guards: dict[str, Guardrail]
    settings: ServerSettings

    def __post_init__(self) -> None:
        check_served(self.model, self.guards, self.settings)
        self.positions = max_positions(self.model)
        self.vocab_size = config_value(self.model, ("vocab_size",)) or len(self.tokenizer)
        self.special_ids = set(self.tokenizer.all_special_ids)

    def aliases(self) -> list[str]:
        """The model ids a request may name: the model, each guard alone, and no guard."""
        base = self.settings.model_id
        return [base, *(f"{base}+{name}" for name in self.guards), f"{base}+{NO_GUARD}"]

    def select(self, model: str | None, guards: list[str] | None) -> tuple[tuple[str, Guardrail], ...]:
        """The guards a request asked for, in order (see the module docstring).

        Raises:
            ApiError: an unknown model or guard, a repeated guard, or guards given twice.
        """
        base, plus, alias = (self.settings.model_id if model is None else model).partition("+")
        if base != self.settings.model_id or (plus and not alias):
            raise ApiError(
                404,
                f"model {model!r} does not exist: use {self.settings.model_id!r} or "
                f"'{self.settings.model_id}+GUARD' (GET /v1/models lists them)",
                param="model",
                code="model_not_found",
            )
        if alias and guards is not None:
            raise ApiError(
                400, "give the guards in the model name ('id+guard') or in 'guards', not both", param="guards"
            )
        param = "model" if alias else "guards"
        if alias:
            names = [] if alias == NO_GUARD else alias.split("+")
        elif guards is not None:
            names = list(guards)
        else:
            names = list(self.settings.default_guards or self.guards)
        loaded = ", ".join(self.guards) or "none"
        for name in names:
            if name not in self.guards:
                raise ApiError(
                    404 if alias else 400,
                    f"unknown guard {name!r} in {param}: this server has {loaded}",
                    param=param,
                    code="guard_not_found",
                )
        if len(set(names)) != len(names):
            raise ApiError(400, f"{param} names a guard twice: {names}", param=param)
        return tuple((name, self.guards[name]) for name in names)

    def new_tokens(
        self,
        requested: int | None,
        prompt_tokens: int,
        *,
        default: int,
        param: str,
        prompt_param: str,
        minimum: int = 1,
    ) -> int:
        """How many tokens to generate: ``requested`` checked, or ``default`` within the model's room.

        ``minimum`` is 0 for scoring requests (``echo`` with ``max_tokens: 0``).

        Raises:
            ApiError: ``requested`` below ``minimum`` or over the server's limit, or a prompt with
                no room left in the model's positions.
        """
        limit = self.settings.max_tokens
        if requested is not None and requested < minimum:
            raise ApiError(400, f"{param} must be at least {minimum}, got {requested}", param=param)
        if requested is not None and requested > limit:
            raise ApiError(400, f"{param} {requested} is over this server's limit of {limit}", param=param)
        room = None if self.positions is None else self.positions - prompt_tokens
        wanted = min(default, limit) if requested is None else requested
        if room is not None and wanted > room:
            if requested is None and room >= max(minimum, 1):
                return room
            if requested is None:
                raise ApiError(
                    400,
                    f"{prompt_param}: the prompt has {prompt_tokens} tokens, which leaves no room to "
                    f"generate in the model's {self.positions} positions; shorten the prompt",
                    param=prompt_param,
                    code="context_length_exceeded",
                )
            raise ApiError(
                400,
                f"{prompt_param}: the prompt has {prompt_tokens} tokens and {param} is {wanted}: together "
                f"over the model's {self.positions} positions; shorten the prompt or lower {param}",
                param=prompt_param,
                code="context_length_exceeded",
            )
        return wanted


def check_served(model: nn.Module, guards: dict[str, Guardrail], settings: ServerSettings) -> None:
    """Refuse, when the app is made, a model id or guards that no request could use.

    Raises:
        SaeguardError: a model id or guard name that is not letters, digits, ``_ . -`` (a guard
            named ``none``), a value that is not a :class:`Guardrail`, a guard fitted on a model of
            another width or layer count (:meth:`Guardrail.check_model`, weights not compared), a
            TopK guard read without its SAE, or ``default_guards`` naming a guard not given.
    """
    names = "use letters, digits, '_', '.' or '-'"
    require(
        isinstance(settings.model_id, str) and bool(NAME.fullmatch(settings.model_id)),
        f"model_id {settings.model_id!r}: {names} ('+' joins guard names in a model alias)",
    )
    for name, guard in guards.items():
        require(
            isinstance(name, str) and bool(NAME.fullmatch(name)) and name != NO_GUARD,
            f"guard name {name!r}: {names}, and not {NO_GUARD!r}",
        )
        require(
            isinstance(guard, Guardrail),
            f"guard {name!r} is a {type(guard).__name__}, not a Guardrail: "
            "pass Guardrail.load(FOLDER, model)",
        )
        try:
            guard.check_model(model, strict=False)
            guard.latents.check_runnable()
        except SaeguardError as error:
            raise SaeguardError(f"guard {name!r}: {error}") from None
    missing = [name for name in settings.default_guards or () if name not in guards]
    if missing:
        raise SaeguardError(f"default_guards names {missing[0]!r}, which is not among the guards given")

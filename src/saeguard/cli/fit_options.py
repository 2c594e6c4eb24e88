"""CLI options generated from ``FitConfig``: one option per field, its default and help from the field.

:func:`fit_options` gives a command ``--preset`` plus one ``--field-name`` option per
``FitConfig`` field (help from the field's metadata, choices from its ``Literal``
type, the default shown from the preset), so a new field is a new option on
``fit``, ``sweep`` and ``demo`` with no edit here. Options left out keep the
preset's value; options given override it (issue 10 §2, issue 12 §2).
"""

from __future__ import annotations

import functools
import inspect
import re
import types
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal, TypeVar, Union, cast, get_args, get_origin

import typer
from rich.markup import escape

from saeguard.config import PRESETS, Clamp, FitConfig, Preset, preset, type_hints, with_overrides
from saeguard.errors import SaeguardError

F = TypeVar("F", bound=Callable[..., Any])
SETTINGS_PARAMETER = "settings"
PANEL = "Fit settings (FitConfig; options given override --preset)"
SHORT_NAMES = {"n_features": ("-n",)}
MAX_CHUNKS = "max_chunks"  # shorthand for max_forget_chunks and max_retain_chunks


@dataclass(frozen=True)
class FitSettings:
    """What a command's fit options resolved to.

    Attributes:
        config: the preset with the options given applied, validated.
        given: names of the ``FitConfig`` fields set explicitly on the command line.
    """

    config: FitConfig
    given: frozenset[str]


def option_name(field_name: str) -> str:
    """``--n-features`` for ``n_features``."""
    return "--" + field_name.replace("_", "-")


def describe_preset(name: Preset) -> str:
    """What preset ``name`` changes from ``FitConfig()``, e.g. ``layer=6, clamp=5x, ...``."""
    changes = PRESETS[name]
    return ", ".join(f"{key}={value}" for key, value in changes.items()) or "FitConfig's defaults"


def preset_help() -> str:
    """Help of ``--preset``: what each preset changes."""
    described = "; ".join(f"{name}: {describe_preset(name)}" for name in PRESETS)
    return f"Starting settings ({described})"


def _cli_type(hint: Any) -> Any:
    """The option type for a field hint: Literal stays (choices), a union of several types reads as str."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [arg for arg in get_args(hint) if arg is not type(None)]
        return _cli_type(options[0]) if len(options) == 1 else str
    if origin is Literal or hint in (int, float, bool, str):
        return hint
    return str  # Clamp and other parsed types


def _field_option(name: str, hint: Any, shown: Any) -> inspect.Parameter:
    _, text = FitConfig.option(name)
    if shown is not None:  # escaped: typer renders help as rich markup
        text = f"{text} {escape(f'[default: {shown}]')}"
    decls = (option_name(name), *SHORT_NAMES.get(name, ()))
    if _cli_type(hint) is bool:
        decls = (f"{option_name(name)}/--no-{name.replace('_', '-')}",)
    option = typer.Option(*decls, help=text, rich_help_panel=PANEL, show_default=False)
    # Computed at run time for typer; typed Any because mypy cannot check a computed annotation.
    annotated: Any = Annotated
    annotation = annotated[_cli_type(hint) | None, option]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _cli_value(name: str, value: Any) -> Any:
    if name == "layer" and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if name == "clamp":
        return Clamp.parse(value)
    return value


def resolve_settings(preset_name: str, chosen: dict[str, Any]) -> FitSettings:
    """``preset(preset_name)`` with the options given (not None) applied and validated.

    ``max_chunks`` sets both chunk caps unless one is given on its own.

    Raises:
        SaeguardError: an unknown preset, an unreadable clamp, a value out of range, or two
            settings that do not fit together (naming the one the preset set and the option for it).
    """
    given = {name: _cli_value(name, value) for name, value in chosen.items() if value is not None}
    both = given.pop(MAX_CHUNKS, None)
    if both is not None:
        given.setdefault("max_forget_chunks", both)
        given.setdefault("max_retain_chunks", both)
    start = preset(preset_name)
    try:
        config = with_overrides(start, given)
    except SaeguardError as error:
        raise SaeguardError(_blame_preset(str(error), preset_name, start, given)) from None
    return FitSettings(config, frozenset(given))


def _blame_preset(message: str, preset_name: str, start: FitConfig, given: Collection[str]) -> str:
    """``message`` saying which of the settings it names came from the preset, and how to change them.

    A check between two settings (``min_window_tokens`` <= ``window_tokens``) can fail on a
    value the user gave and one the preset chose; the user never typed the second, so the
    error names where it came from and the option that sets it. Other messages are returned as is.
    """
    named = [spec.name for spec in fields(FitConfig) if re.search(rf"\b{spec.name}\b", message)]
    kept = [name for name in named if name not in given]
    typed = [name for name in named if name in given]
    if not (kept and typed):
        return message
    values = ", ".join(f"{name} {getattr(start, name)}" for name in kept)
    options = " and ".join(option_name(name) for name in kept)
    dropped = " and ".join(option_name(name) for name in typed)
    return f"{message}; --preset {preset_name} set {values}: also pass {options}, or drop {dropped}"


def fit_options(*, default_preset: Preset = "paper", skip: Collection[str] = ()) -> Callable[[F], F]:
    """Decorate a command so it takes ``--preset`` and one option per ``FitConfig`` field.

    The command declares a keyword parameter ``settings: FitSettings`` and receives
    the resolved settings there; fields in ``skip`` (a sweep's grid axes) get no option.
    """
    shown_config = preset(default_preset)
    hints = type_hints(FitConfig)
    added = [
        _field_option(spec.name, hints[spec.name], getattr(shown_config, spec.name))
        for spec in fields(FitConfig)
        if spec.name not in skip
    ]
    if not {"max_forget_chunks", "max_retain_chunks"} & set(skip):
        added.append(
            inspect.Parameter(
                MAX_CHUNKS,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    int | None,
                    typer.Option(help="Sets both chunk caps at once", rich_help_panel=PANEL),
                ],
            )
        )
    preset_parameter = inspect.Parameter(
        "preset",
        inspect.Parameter.KEYWORD_ONLY,
        default=default_preset,
        annotation=Annotated[Preset, typer.Option(help=preset_help(), rich_help_panel=PANEL)],
    )
    names = [parameter.name for parameter in added]

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [
            parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for parameter in signature.parameters.values()
            if parameter.name != SETTINGS_PARAMETER
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            chosen = {name: kwargs.pop(name) for name in names}
            kwargs[SETTINGS_PARAMETER] = resolve_settings(kwargs.pop("preset"), chosen)
            return command(**kwargs)

        parameters = [*own, preset_parameter, *added]
        # typeshed's FunctionType has no __signature__, but inspect.signature reads it.
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
        return cast(F, wrapper)

    return decorate

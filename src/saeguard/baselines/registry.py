"""The registry of unlearning baselines: each method module registers itself by name.

Modelled on how peft registers its tuners (``register_peft_method`` called from
``peft/tuners/<method>/__init__.py``): one module per method declares its
config dataclass, how it prepares a model and builds its loss, and its grids,
then calls :func:`register`. ``saeguard.baselines`` imports every method module,
so ``get``/``names`` always see the built-in methods (ga, graddiff, npo, rmu).

Grids: ``paper_grid`` is the grid of the DSG paper's baselines on
gemma-2-2b-it (Muhamed et al. 2025; docs/method.md §6.2). ``small_grid`` is scaled for
2 CPU cores on SmolLM2-135M (30 layers, d = 576): each run sees ~10x fewer
tokens than the paper's (<= 60 steps x 4 x 128 tokens vs 400 x 8 x longer
texts), so learning rates sit at the top of the paper's range. All four small
grids together take ~40 minutes on 2 pinned cores.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from saeguard.baselines.training import CheckedSettings, LossFn, TrainConfig
from saeguard.errors import SaeguardError, require

__all__ = ["Method", "MethodConfig", "get", "grid_configs", "names", "register"]

ConfigT = TypeVar("ConfigT", bound="MethodConfig")


@dataclass
class MethodConfig(CheckedSettings):
    """Base of every method's config: the shared optimisation settings plus the method's own.

    Subclasses add fields declared with ``metadata={"help": ..., "min": ...}``;
    :meth:`validate` checks them from their declarations (types, ``Literal``
    choices, ranges), so no config writes its own checks.
    """

    train: TrainConfig = field(
        default_factory=TrainConfig, metadata={"help": "Optimisation settings shared by every method"}
    )

    @classmethod
    def from_dict(cls: type[ConfigT], data: Mapping[str, Any]) -> ConfigT:
        """Rebuild from ``dataclasses.asdict`` output (the ``config`` of ``unlearning.json``).

        Raises:
            SaeguardError: ``data`` names settings this class does not have (another saeguard version).
        """
        values = dict(data)
        try:
            values["train"] = TrainConfig(**values.get("train", {}))
            return cls(**values)
        except TypeError as error:
            raise SaeguardError(
                f"saved {cls.__name__} does not match this saeguard version ({error}): re-run it"
            ) from None


Setup = Callable[[nn.Module, Any], tuple[nn.Module, list[nn.Parameter], LossFn]]
"""``setup(model, config) -> (model, trainable parameters, loss_fn)``; may wrap ``model`` (LoRA)."""
Grid = Mapping[str, tuple[Any, ...]]
"""Setting name (of the method's config or of ``TrainConfig``) -> the values to try."""


@dataclass(frozen=True)
class Method:
    """One registered unlearning method.

    Attributes:
        name: lower-case registry key, e.g. ``"npo"``.
        config: the method's :class:`MethodConfig` subclass; ``config()`` is its default.
        setup: freezes what the method does not train and builds its loss (see :data:`Setup`).
        paper_grid: the DSG paper's grid for this method (docs/method.md §6.2).
        small_grid: the grid scaled for 2 CPU cores on a 135M model.
    """

    name: str
    config: type[MethodConfig]
    setup: Setup
    paper_grid: Grid
    small_grid: Grid

    def settings(self) -> set[str]:
        """Names a grid may vary: the method's own settings and every ``TrainConfig`` field."""
        own = {spec.name for spec in dataclasses.fields(self.config)} - {"train"}
        return own | _TRAIN_FIELDS


_TRAIN_FIELDS = frozenset(spec.name for spec in dataclasses.fields(TrainConfig))
_REGISTRY: dict[str, Method] = {}


def register(
    name: str,
    *,
    config: type[MethodConfig],
    setup: Setup,
    paper_grid: Grid,
    small_grid: Grid,
) -> Method:
    """Add a method under ``name`` (call it once, at the bottom of the method's module).

    Raises:
        SaeguardError: ``name`` is not lower case or is taken, ``config`` is not a
            ``MethodConfig`` dataclass, or a grid names a setting ``config`` lacks.
    """
    require(name.isidentifier() and name.islower(), f"method name {name!r} must be a lower-case identifier")
    require(name not in _REGISTRY, f"an unlearning method called {name!r} is registered: choose another name")
    require(
        dataclasses.is_dataclass(config) and issubclass(config, MethodConfig),
        f"{name}: config must be a MethodConfig dataclass, got {config!r}",
    )
    method = Method(name, config, setup, paper_grid, small_grid)
    for label, grid in (("paper_grid", paper_grid), ("small_grid", small_grid)):
        unknown = sorted(set(grid) - method.settings())
        require(not unknown, f"{name}.{label} keys {unknown} are not settings of {config.__name__}")
    _REGISTRY[name] = method
    return method


def names() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> Method:
    """The method registered as ``name`` (case and surrounding spaces ignored).

    Raises:
        SaeguardError: no such method; the message lists the registered names.
    """
    key = name.strip().lower()
    require(key in _REGISTRY, f"unknown unlearning method {name!r}: use one of {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def grid_configs(
    method: str,
    grid: Mapping[str, Sequence[Any]] | str = "small",
    *,
    base: TrainConfig | None = None,
) -> list[MethodConfig]:
    """Every config of a grid: ``"paper"``, ``"small"`` or a mapping of setting -> values.

    Keys name a field of the method's config or of ``TrainConfig``; settings the
    grid leaves alone (device, seed, use_lora, ...) come from ``base`` (default:
    the method's default ``train``). Configs come in ``itertools.product`` order
    of the grid's keys; they are not validated here (``unlearn`` validates).

    Raises:
        SaeguardError: unknown method, unknown named grid, or a key that is not a setting.
    """
    entry = get(method)
    if isinstance(grid, str):
        named = {"paper": entry.paper_grid, "small": entry.small_grid}
        require(grid in named, f"unknown grid {grid!r}: use 'paper', 'small' or a mapping")
        grid = named[grid]
    unknown = set(grid) - entry.settings()
    require(not unknown, f"grid keys {sorted(unknown)} are not settings of {entry.config.__name__}")
    keys = list(grid)
    configs: list[MethodConfig] = []
    for values in itertools.product(*(tuple(grid[key]) for key in keys)):
        chosen = dict(zip(keys, values, strict=True))
        train_kwargs = {k: v for k, v in chosen.items() if k in _TRAIN_FIELDS}
        method_kwargs = {k: v for k, v in chosen.items() if k not in _TRAIN_FIELDS}
        train = dataclasses.replace(base or entry.config().train, **train_kwargs)
        configs.append(entry.config(train=train, **method_kwargs))
    return configs

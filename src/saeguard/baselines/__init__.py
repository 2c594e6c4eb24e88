"""Gradient-based unlearning baselines (GA, GradDiff, NPO, RMU) on plain HF causal LMs.

These are what DSG is compared against (docs/method.md §6). Unlike DSG they edit
the weights, so ``unlearn`` trains the given model in place and returns it
(wrapped by peft when ``use_lora``). Artifacts are safetensors + JSON only.

Layout (as peft lays out ``peft/tuners/<method>``): one module per method
(``ga``, ``graddiff``, ``npo``, ``rmu``) declares its config, loss and grids and
registers itself in :mod:`~saeguard.baselines.registry`; ``training`` is the
shared loop, ``likelihood`` the shared log-probabilities, ``unlearning`` the
entry point and ``artifact`` the save/load. Importing this package registers
the built-in methods.
"""

from __future__ import annotations

from saeguard.baselines.artifact import UnlearnedRecord, load_unlearned, save_unlearned
from saeguard.baselines.ga import GAConfig
from saeguard.baselines.graddiff import GradDiffConfig
from saeguard.baselines.npo import NPOConfig
from saeguard.baselines.registry import Method, MethodConfig, get, grid_configs, names, register
from saeguard.baselines.rmu import DEFAULT_MODEL_RMU, RMUConfig
from saeguard.baselines.training import TrainConfig, TrainResult
from saeguard.baselines.unlearning import unlearn

__all__ = [
    "DEFAULT_MODEL_RMU",
    "METHODS",
    "PAPER_GRIDS",
    "SMALL_GRIDS",
    "GAConfig",
    "GradDiffConfig",
    "Method",
    "MethodConfig",
    "NPOConfig",
    "RMUConfig",
    "TrainConfig",
    "TrainResult",
    "UnlearnedRecord",
    "get",
    "grid_configs",
    "load_unlearned",
    "names",
    "register",
    "save_unlearned",
    "unlearn",
]

# Snapshots of the built-in methods (a method registered later is seen by get/names only).
METHODS: dict[str, type[MethodConfig]] = {name: get(name).config for name in names()}
PAPER_GRIDS: dict[str, dict[str, tuple]] = {name: dict(get(name).paper_grid) for name in names()}
SMALL_GRIDS: dict[str, dict[str, tuple]] = {name: dict(get(name).small_grid) for name in names()}

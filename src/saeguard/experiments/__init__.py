"""The paper's experiments as commands: ``saeguard experiment NAME`` (issue 15).

Each experiment is one module with a settings dataclass (defaults: the embedded default
model offline; ``quick()``: a smoke run in minutes), typed JSON records, a resumable grid
(``runs.grid``), and a report section stating its threat model:

- ``sequential``: unlearning requests one after another (stacked guardrails, a union
  guardrail, gradient baselines applied in turn);
- ``relearn``: fine-tuning on forget text against test-time / train-time DSG and RMU;
- ``data-efficiency``: DSG and RMU fitted on a fraction of the forget documents;
- ``zero-shot``: latents chosen by their descriptions, no forget data;
- ``ablation``: static vs dynamic clamp over c, p_dyn, p_ratio and N.

Modules are imported on demand (:func:`experiment`), so listing the names costs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from saeguard.errors import require

#: Experiment name -> (module, settings class, run function).
_EXPERIMENTS: dict[str, tuple[str, str, str]] = {
    "sequential": ("sequential", "SequentialConfig", "run_sequential"),
    "relearn": ("relearn", "RelearnConfig", "run_relearn"),
    "data-efficiency": ("data_efficiency", "DataEfficiencyConfig", "run_data_efficiency"),
    "zero-shot": ("zero_shot", "ZeroShotConfig", "run_zero_shot"),
    "ablation": ("ablation", "AblationConfig", "run_ablation"),
}
NAMES = tuple(_EXPERIMENTS)


@dataclass(frozen=True)
class Experiment:
    """One experiment: its settings class (``quick()``, ``validate()``) and its run function.

    ``run(model, tokenizer, sae, config, output, *, cache_dir, show_progress, log)``
    returns an :class:`~saeguard.experiments.report.ExperimentResult`.
    """

    name: str
    config: Any  # the settings class: ``cls()``, ``cls.quick()``, ``validate()``, ``needs_sae``, ``fit``
    run: Any


def experiment(name: str) -> Experiment:
    """The experiment called ``name``.

    Raises:
        SaeguardError: no such experiment (the message lists them).
    """
    require(name in _EXPERIMENTS, f"unknown experiment {name!r}: use one of {', '.join(NAMES)}")
    module_name, config_name, run_name = _EXPERIMENTS[name]
    module = importlib.import_module(f"saeguard.experiments.{module_name}")
    return Experiment(name, getattr(module, config_name), getattr(module, run_name))


__all__ = ["NAMES", "Experiment", "experiment"]

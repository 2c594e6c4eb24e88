"""saeguard: precision unlearning in LLMs with Dynamic SAE Guardrails (DSG).

An inference-time guard: the model's weights, and the knowledge in them, are
unchanged; selected SAE latents are clamped on inputs the gate flags.
Layers (docs/architecture.md): config/errors/io -> hf -> core -> eval, baselines -> runs -> demo, bench, cli.
"""

from saeguard._version import __version__
from saeguard.config import Clamp, FitConfig
from saeguard.core.gate import token_scope
from saeguard.core.guardrail import Guardrail
from saeguard.core.hooks import GateHook
from saeguard.core.sae import SelectedLatents, load_sae
from saeguard.errors import SaeguardError

__all__ = [
    "Clamp",
    "FitConfig",
    "GateHook",
    "Guardrail",
    "SaeguardError",
    "SelectedLatents",
    "__version__",
    "load_sae",
    "token_scope",
]

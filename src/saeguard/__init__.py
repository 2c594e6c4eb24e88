"""saeguard: precision unlearning in LLMs with Dynamic SAE Guardrails (DSG).

An inference-time guard: the model's weights, and the knowledge in them, are
unchanged; selected SAE latents are clamped on inputs the gate flags.
"""

from saeguard.errors import SaeguardError
from saeguard.fit import FitConfig, parse_clamp
from saeguard.gate import GateHook, token_scope
from saeguard.guardrail import Guardrail
from saeguard.sae import SelectedLatents, load_sae

__all__ = [
    "FitConfig",
    "GateHook",
    "Guardrail",
    "SaeguardError",
    "SelectedLatents",
    "load_sae",
    "parse_clamp",
    "token_scope",
]
__version__ = "0.1.0"

"""Why the gate decided what it did: per-token evidence on a prompt, and what each selected latent is.

``trace`` (the playground's per-token trace), ``prompt`` (the trace plus per-latent activations
and the clamp's reach), ``latents`` (top contexts, activation samples, decoder logits,
Neuronpedia links), ``guard`` (everything gathered for one guard) and ``report`` (the pages).
"""

from saeguard.explain.guard import GuardExplanation, LatentExplanation, explain_guard
from saeguard.explain.latents import ScanConfig, scan_latents
from saeguard.explain.prompt import LatentTrace, trace_latents
from saeguard.explain.trace import PromptTrace, trace_prompt

__all__ = [
    "GuardExplanation",
    "LatentExplanation",
    "LatentTrace",
    "PromptTrace",
    "ScanConfig",
    "explain_guard",
    "scan_latents",
    "trace_latents",
    "trace_prompt",
]

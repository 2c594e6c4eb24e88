"""What evaluation result records say about the guard that produced them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saeguard.core.guardrail import Guardrail


def guard_identity(guard: Guardrail | None) -> dict[str, Any] | None:
    """The parts of a guardrail that decide its behaviour, for result records."""
    if guard is None:
        return None
    return {
        "layer": int(guard.layer),
        "latent_ids": [int(i) for i in guard.latents.ids],
        "tau": float(guard.tau),
        "clamp": float(guard.clamp_value),
        "architecture": guard.latents.architecture,
    }

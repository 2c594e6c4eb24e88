"""Serving guards inside vLLM: per-request gate and clamp in vLLM's model runner (optional extra ``vllm``).

:mod:`saeguard.vllm.router` is the per-request state machine (plain torch, tested on CPU);
:mod:`saeguard.vllm.plugin` is the vLLM general plugin that feeds it (imports vLLM lazily).
See docs/performance.md ("vLLM") for set-up and what was measured.
"""

from __future__ import annotations

from saeguard.vllm.router import GUARD_KEY, TAG_KEY, GuardRouter, RequestStep

__all__ = ["GUARD_KEY", "TAG_KEY", "GuardRouter", "RequestStep"]

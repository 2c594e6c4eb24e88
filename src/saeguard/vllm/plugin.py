"""The vLLM side: a general plugin that puts the guard router's hooks into vLLM's model runner.

Set ``SAEGUARD_VLLM_GUARDS="bio=/path/to/guard[,other=/path]"`` (artifact folders that
``Guardrail.save`` wrote) and start vLLM as usual (``vllm serve MODEL`` or ``LLM(MODEL)``):
vLLM loads this module's :func:`register` in every process (entry point group
``vllm.general_plugins``). It then (1) turns on eager mode and turns off prefix caching
(hooks do not run inside CUDA graphs, and a cached prefix is never seen by the gate) and
(2) installs, after the model loads, a pre-hook on the model (the step's token ids) and a
forward hook on each guarded decoder block, which hands the block's residual stream to
:class:`~saeguard.vllm.router.GuardRouter` with the step's per-request layout read from the
model runner and the forward context. Requests choose a guard with
``SamplingParams(extra_args={"saeguard": "bio"})`` (``"none"``: unguarded; absent:
``SAEGUARD_VLLM_DEFAULT``, else the first guard); ``"saeguard_tag"`` names the request in
the decision log that ``LLM.collective_rpc(saeguard.vllm.plugin.decisions)`` returns.

This follows the design of vllm-lens (per-request hooks keyed by request id, state kept
across a request's forwards, eager mode) and IBM vLLM-Hook (per-request settings in
``extra_args``); no code is taken from either. Only this module imports vLLM, lazily,
and only the vLLM internals named in :func:`request_steps` and :func:`register` are relied on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from saeguard.errors import SaeguardError, require
from saeguard.vllm.router import GuardRouter, RequestStep

log = logging.getLogger(__name__)

GUARDS_ENV = "SAEGUARD_VLLM_GUARDS"
DEFAULT_ENV = "SAEGUARD_VLLM_DEFAULT"
USER_TURNS_ENV = "SAEGUARD_VLLM_USER_TURNS"
_ROUTER_ATTR = "_saeguard_router"
_PATCHED = "_saeguard_patched"


def parse_guard_spec(spec: str) -> dict[str, str]:
    """``"bio=/a,cyber=/b"`` -> {"bio": "/a", "cyber": "/b"}.

    Raises:
        SaeguardError: an entry without ``=``, an empty name or path, or a name given twice.
    """
    guards: dict[str, str] = {}
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        name, sep, path = entry.partition("=")
        name, path = name.strip(), path.strip()
        require(
            bool(sep and name and path),
            f"{GUARDS_ENV} entry {entry!r} is not name=folder: e.g. {GUARDS_ENV}=bio=/guards/bio",
        )
        require(name not in guards, f"{GUARDS_ENV} names guard {name!r} twice: give each a new name")
        guards[name] = path
    require(bool(guards), f"{GUARDS_ENV} names no guard: e.g. {GUARDS_ENV}=bio=/guards/bio")
    return guards


def router_from_env(tokenizer: Any = None, environ: dict[str, str] | None = None) -> GuardRouter | None:
    """The router the environment asks for (None when ``SAEGUARD_VLLM_GUARDS`` is unset).

    Raises:
        SaeguardError: a bad spec, a guard that does not load, or an unknown default.
    """
    env = os.environ if environ is None else environ
    spec = env.get(GUARDS_ENV)
    if not spec:
        return None
    from saeguard.core.guardrail import Guardrail

    paths = parse_guard_spec(spec)
    hooks = {name: Guardrail.load(path).hook() for name, path in paths.items()}
    default = env.get(DEFAULT_ENV, next(iter(paths)))
    user_turns = env.get(USER_TURNS_ENV, "1") != "0"
    return GuardRouter(
        hooks,
        default=None if default.lower() in ("none", "off", "") else default,
        tokenizer=tokenizer if user_turns else None,
    )


# -- reading a step from vLLM's runner ----------------------------------------------------------
def request_steps(runner: Any, attn_metadata: Any) -> list[RequestStep]:
    """The requests of the running step and their rows, from a vLLM v1 model runner.

    Relies on ``runner.input_batch.req_ids`` (batch order), ``runner.requests[id]``
    (``num_computed_tokens``, ``prompt_token_ids``, ``sampling_params.extra_args``) and the
    attention metadata's ``query_start_loc`` (host copy ``query_start_loc_cpu`` when there is
    one). Empty for profiling and dummy runs.
    """
    batch = getattr(runner, "input_batch", None)
    ids = list(getattr(batch, "req_ids", []) or [])
    starts = _runner_query_starts(runner, len(ids)) or _query_starts(attn_metadata)
    if not ids or starts is None:
        return []
    steps = []
    for index, request_id in enumerate(ids[: len(starts) - 1]):
        state = runner.requests.get(request_id)
        if state is None:
            continue
        params = getattr(state, "sampling_params", None)
        steps.append(
            RequestStep(
                request_id=request_id,
                start=int(starts[index]),
                stop=int(starts[index + 1]),
                computed=int(state.num_computed_tokens),
                prompt_ids=getattr(state, "prompt_token_ids", None) or (),  # no copy: read on first sight
                extra_args=getattr(params, "extra_args", None),
            )
        )
    return steps


def _runner_query_starts(runner: Any, count: int) -> list[int] | None:
    """Row offsets from the runner's host buffer (``query_start_loc.np``/``.cpu``, vLLM >= 0.10), if any."""
    buffer = getattr(runner, "query_start_loc", None)
    host = getattr(buffer, "np", None)
    if host is None:
        host = getattr(buffer, "cpu", None)
        host = host if isinstance(host, torch.Tensor) else None
    if host is None or count == 0 or len(host) < count + 1:
        return None
    return [int(v) for v in host[: count + 1]]


def _query_starts(attn_metadata: Any) -> list[int] | None:
    """Row offsets (num_reqs + 1) of the flattened batch, from any attention metadata that has them."""
    if attn_metadata is None:
        return None
    candidates = attn_metadata if isinstance(attn_metadata, list) else [attn_metadata]
    for item in candidates:
        values = item.values() if isinstance(item, dict) else [item]
        for meta in values:
            host = getattr(meta, "query_start_loc_cpu", None)
            loc = host if host is not None else getattr(meta, "query_start_loc", None)
            if isinstance(loc, torch.Tensor):
                return [int(v) for v in loc.tolist()]
    return None


# -- hooks ---------------------------------------------------------------------------------------
def install(
    runner: Any, model: nn.Module, router: GuardRouter, context: Callable[[], Any]
) -> list[torch.utils.hooks.RemovableHandle]:
    """Hook ``router`` into ``model`` (the runner's): returns the handles (``.remove()`` them to undo).

    ``context()`` returns the step's attention metadata (vLLM: ``get_forward_context().attn_metadata``).

    Raises:
        SaeguardError: a guard's layer is outside the model's decoder blocks.
    """
    from saeguard.hf.layers import decoder_blocks

    blocks = decoder_blocks(model)
    for layer in router.layers:
        require(0 <= layer < len(blocks), f"guard layer {layer} is outside the model's {len(blocks)} blocks")
    step: dict[str, Any] = {}

    def read_step(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        step["ids"] = ids if isinstance(ids, torch.Tensor) else None
        step["steps"] = request_steps(runner, context())
        router.retire(list(getattr(runner, "requests", {}).keys()))

    def make_hook(layer: int) -> Callable[[nn.Module, object, object], object]:
        def hook(_module: nn.Module, _args: object, output: object) -> object:
            steps = step.get("steps")
            if not steps:
                return None
            hidden, residual = (output[0], output[1]) if isinstance(output, tuple) else (output, None)
            if not isinstance(hidden, torch.Tensor):
                return None
            # vLLM's decoder layers return (hidden, residual) and defer the add to the next norm
            stream = hidden + residual if isinstance(residual, torch.Tensor) else hidden
            clamped = router.apply(layer, stream, step.get("ids"), steps)
            if clamped is None:
                return None
            if not isinstance(output, tuple):
                return clamped
            return (hidden + (clamped - stream), *output[1:])

        return hook

    handles = [model.register_forward_pre_hook(read_step, with_kwargs=True)]
    handles += [blocks[layer].register_forward_hook(make_hook(layer)) for layer in sorted(router.layers)]
    return handles


def decisions(worker: Any) -> dict[str, dict[str, Any]]:
    """The router's decision log on a vLLM worker: ``llm.collective_rpc(decisions)``."""
    router = getattr(getattr(worker, "model_runner", None), _ROUTER_ATTR, None)
    return router.decisions() if router is not None else {}


def engine_kwargs() -> dict[str, Any]:
    """What a guarded ``vllm.LLM(...)`` needs: eager mode and no torch.compile (Python hooks run),
    and no prefix caching (the gate must see every prompt token)."""
    return {"enforce_eager": True, "enable_prefix_caching": False, "compilation_config": 0}


# -- the plugin ----------------------------------------------------------------------------------
def register() -> None:
    """vLLM general-plugin entry point: a no-op unless ``SAEGUARD_VLLM_GUARDS`` is set."""
    if not os.environ.get(GUARDS_ENV):
        return
    try:
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    except ImportError as error:  # guards were asked for: never serve unguarded silently
        raise SaeguardError(
            f"saeguard's vLLM plugin does not support this vLLM ({error}): use vLLM >= 0.10 (V1 engine) "
            f"or unset {GUARDS_ENV}"
        ) from None
    _patch(EngineArgs, "create_engine_config", _engine_config_wrapper)
    _patch(GPUModelRunner, "load_model", _load_model_wrapper)


def _patch(owner: type, name: str, wrap: Callable[[Callable], Callable]) -> None:
    original = getattr(owner, name)
    if getattr(original, _PATCHED, False):  # plugins load once per process, maybe more
        return
    patched = wrap(original)
    setattr(patched, _PATCHED, True)
    setattr(owner, name, patched)


def _engine_config_wrapper(original: Callable) -> Callable:
    def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        for name, value in (("enforce_eager", True), ("enable_prefix_caching", False)):
            if getattr(self, name, value) != value:
                log.warning("saeguard: setting %s=%s for guarded serving", name, value)
            setattr(self, name, value)
        return original(self, *args, **kwargs)

    return create_engine_config


def _load_model_wrapper(original: Callable) -> Callable:
    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        from vllm.forward_context import get_forward_context, is_forward_context_available

        def attn_metadata() -> Any:
            return get_forward_context().attn_metadata if is_forward_context_available() else None

        router = router_from_env(_tokenizer(self))
        if router is not None:
            model = self.get_model() if hasattr(self, "get_model") else self.model
            model = model.unwrap() if hasattr(model, "unwrap") else model  # a CUDA-graph wrapper
            install(self, model, router, attn_metadata)
            setattr(self, _ROUTER_ATTR, router)
            log.info("saeguard: guards %s on layers %s", sorted(router.guards), sorted(router.layers))
        return result

    return load_model


def _tokenizer(runner: Any) -> Any:
    """The served model's tokenizer (for user-turn spans), or None when it cannot be loaded."""
    name = getattr(getattr(runner, "model_config", None), "tokenizer", None)
    if not name:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)
    except Exception as error:  # noqa: BLE001 - any loading failure means: count every non-special token
        log.warning("saeguard: no tokenizer for user-turn spans (%s); every non-special token counts", error)
        return None

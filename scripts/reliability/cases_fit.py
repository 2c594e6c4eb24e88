"""Guardrail.fit, FitConfig, presets and corpora: wrong types, bad values, malformed text."""

from __future__ import annotations

import json
import pickle
import warnings
from functools import partial
from typing import Any

import torch

from saeguard import Guardrail
from saeguard.config import Clamp, FitConfig, preset, with_overrides
from saeguard.testing import random_sae, tiny_gpt2
from scripts.reliability.cases_artifact import Payload
from scripts.reliability.fixtures import FAST, Workspace
from scripts.reliability.framework import Probe


def fit(ws: Workspace, **kw: Any) -> Guardrail:
    """``Guardrail.fit`` on the workspace with FAST settings; keywords replace any argument."""
    args: dict[str, Any] = {
        "model": ws.model,
        "tokenizer": ws.tok,
        "sae": ws.sae,
        "forget": ws.forget,
        "retain": ws.retain,
        "show_progress": False,
        **FAST,
    }
    args.update(kw)
    model, tokenizer, sae = args.pop("model"), args.pop("tokenizer"), args.pop("sae")
    return Guardrail.fit(model, tokenizer, sae, **args)


def run(probe: Probe, ws: Workspace) -> None:
    _wrong_types(probe, ws)
    _config(probe, ws)
    _corpora(probe, ws)
    _lengths_and_layers(probe, ws)
    _statistics_cache(probe, ws)


def _wrong_types(probe: Probe, ws: Workspace) -> None:
    area = "api:fit-types"
    bad: list[tuple[str, dict[str, Any]]] = [
        ("model=None", {"model": None}),
        ("model='llama' (a string)", {"model": "llama"}),
        ("model=tokenizer", {"model": ws.tok}),
        ("tokenizer=None", {"tokenizer": None}),
        ("tokenizer='tok' (a string)", {"tokenizer": "tok"}),
        ("tokenizer=123", {"tokenizer": 123}),
        ("sae=None", {"sae": None}),
        ("sae=123", {"sae": 123}),
        ("sae='missing-folder'", {"sae": "missing-folder"}),
        ("sae=torch.zeros(3)", {"sae": torch.zeros(3)}),
        ("sae of d_in 16 (model width 32)", {"sae": random_sae("standard", d_in=16)}),
        ("forget=None", {"forget": None}),
        ("forget=123", {"forget": 123}),
        ("forget=[] (empty list)", {"forget": []}),
        ("forget=[1, 2]", {"forget": [1, 2]}),
        ("forget=b'bytes'", {"forget": b"cell gene"}),
        ("forget={'text': ...} (a dict)", {"forget": {"text": "cell gene"}}),
        ("retain=['', '  ']", {"retain": ["", "  "]}),
        ("n_features=2.5", {"n_features": 2.5}),
        ("n_features='20'", {"n_features": "20"}),
        ("n_features=True", {"n_features": True}),
        ("n_features=0", {"n_features": 0}),
        ("ratio_percentile=101", {"ratio_percentile": 101}),
        ("ratio_percentile=nan", {"ratio_percentile": float("nan")}),
        ("gate_percentile=inf", {"gate_percentile": float("inf")}),
        ("gate_percentile='95'", {"gate_percentile": "95"}),
        ("clamp=-500", {"clamp": -500}),
        ("clamp=0", {"clamp": 0}),
        ("clamp='abc'", {"clamp": "abc"}),
        ("clamp=nan", {"clamp": float("nan")}),
        ("clamp=True", {"clamp": True}),
        ("clamp=[500]", {"clamp": [500]}),
        ("seq_len=1", {"seq_len": 1}),
        ("seq_len=32.0", {"seq_len": 32.0}),
        ("batch_size=0", {"batch_size": 0}),
        ("importance='bogus'", {"importance": "bogus"}),
        ("gate='sometimes'", {"gate": "sometimes"}),
        ("unknown setting foo=1", {"foo": 1}),
        ("config='paper' (a string)", {"config": "paper"}),
        ("config={'n_features': 3} (a dict)", {"config": {"n_features": 3}}),
        ("memory_budget_gb=0", {"memory_budget_gb": 0}),
        ("window_tokens=0", {"window_tokens": 0}),
        ("cusum_drift=-1", {"cusum_drift": -1.0}),
        ("prompt_min_tokens=100 > prompt_max_tokens=10", {"prompt_min_tokens": 100, "prompt_max_tokens": 10}),
        ("statistics_cache=123", {"statistics_cache": 123}),
    ]
    for given, kw in bad:
        probe.error(area, given, f"Guardrail.fit(..., {given})", partial(fit, ws, **kw))


def _config(probe: Probe, ws: Workspace) -> None:
    area = "api:config"
    probe.error(area, "preset('nope')", "preset('nope')", lambda: preset("nope"))
    probe.error(area, "preset(None)", "preset(None)", lambda: preset(None))  # type: ignore[arg-type]
    probe.error(
        area, "FitConfig.from_dict('x')", "FitConfig.from_dict('x')", lambda: FitConfig.from_dict("x")
    )  # type: ignore[arg-type]
    probe.error(
        area,
        "FitConfig.from_dict n_features=-1",
        "FitConfig.from_dict({'n_features': -1})",
        lambda: FitConfig.from_dict({"n_features": -1}),
    )
    probe.error(area, "Clamp.parse('1e400')", "Clamp.parse('1e400') (inf)", lambda: Clamp.parse("1e400"))
    probe.error(area, "Clamp.parse('-0')", "Clamp.parse('-0')", lambda: Clamp.parse("-0"))
    probe.error(area, "Clamp.parse('x')", "Clamp.parse('x')", lambda: Clamp.parse("x"))
    probe.error(area, "Clamp.parse(None)", "Clamp.parse(None)", lambda: Clamp.parse(None))  # type: ignore[arg-type]
    probe.ok(
        area,
        "Clamp.parse(' 10 X ')",
        "Clamp.parse(' 10 X ') is relative 10",
        lambda: Clamp.parse(" 10 X "),
        lambda c: None if (c.value, c.relative) == (10.0, True) else f"got {c}",
    )
    probe.ok(
        area,
        "preset('demo') + override",
        "with_overrides(preset('demo'), {'n_features': 3}) keeps demo's clamp 5x",
        lambda: with_overrides(preset("demo"), {"n_features": 3}),
        lambda c: None if (c.n_features, str(c.clamp)) == (3, "5x") else f"got {c.n_features}, {c.clamp}",
    )
    probe.error(
        area,
        "with_overrides(unknown)",
        "with_overrides(None, {'n_feature': 3})",
        lambda: with_overrides(None, {"n_feature": 3}),
    )
    probe.error(
        area,
        "FitConfig(n_features=2.5).validate()",
        "FitConfig(n_features=2.5).validate()",
        lambda: FitConfig(n_features=2.5).validate(),  # type: ignore[arg-type]
    )


def _corpora(probe: Probe, ws: Workspace) -> None:
    area = "api:corpus"
    root = ws.root / "corpora"
    errors = {
        "empty.txt": "an empty file",
        "blank.txt": "only whitespace",
        "binary.txt": "binary bytes",
        "latin1.txt": "Latin-1 (not UTF-8) text",
        "bad.jsonl": "a line that is not JSON",
        "nofield.jsonl": "rows without a text field",
        "number.jsonl": "a row whose text is a number",
        "list.jsonl": "a row that is a JSON list",
        "null.jsonl": "a row that is null",
        "pickle.txt": "pickle bytes",
        "emoji.txt": "emoji/zero-width text the tokenizer maps to <unk> only",
        "one-token.txt": "documents of one token each",
    }
    for name, what in errors.items():
        probe.error(
            area, f"forget {name}", f"forget={name} ({what})", partial(fit, ws, forget=str(root / name))
        )
    probe.error(area, "forget=folder", "forget=<a folder>", lambda: fit(ws, forget=str(root)))
    probe.error(area, "forget='hf:'", "forget='hf:' (malformed spec)", lambda: fit(ws, forget="hf:"))
    probe.error(
        area,
        "forget='wiki:nosuchtopic'",
        "forget='wiki:nosuchtopic'",
        lambda: fit(ws, forget="wiki:nosuchtopic"),
    )
    huge = [" ".join(ws.forget) * 40]  # one ~60k-word document
    probe.ok(
        area,
        "forget one huge document",
        "forget=[one 64k-token document], max_forget_chunks=20",
        lambda: fit(ws, forget=huge, max_forget_chunks=20),
        lambda g: None if g.provenance.corpora["forget"].chunks == 20 else "forget chunks not capped at 20",
    )
    (root / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": ws.forget[0]}).encode() + b"\n")
    probe.ok(
        area,
        "forget jsonl with a UTF-8 BOM",
        "forget=bom.jsonl (UTF-8 BOM before the first row)",
        lambda: list(
            __import__("saeguard.hf.corpus", fromlist=["x"]).iter_documents(str(root / "bom.jsonl"))
        ),
        lambda docs: None if docs == [ws.forget[0]] else f"got {len(docs)} documents",
    )


def _statistics_cache(probe: Probe, ws: Workspace) -> None:
    area = "api:stats-cache"
    a_file = ws.fresh("cache-file")
    a_file.write_text("x")
    probe.error(
        area, "cache is a file", "fit(statistics_cache=<a file>)", partial(fit, ws, statistics_cache=a_file)
    )
    cache = ws.fresh("cache")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = fit(ws, statistics_cache=cache).tau
    marker = ws.root / "stats-pickle-ran"
    for path in cache.glob("stats-*.safetensors"):
        path.write_bytes(pickle.dumps(Payload(marker)))
    probe.ok(
        area,
        "cache files replaced by pickle",
        "refit after every cached statistics file became a pickle payload: same tau, payload never runs",
        partial(fit, ws, statistics_cache=cache),
        lambda g: (
            None
            if g.tau == first and not marker.exists()
            else f"tau {g.tau} vs {first}, ran {marker.exists()}"
        ),
    )


def _lengths_and_layers(probe: Probe, ws: Workspace) -> None:
    area = "api:fit-lengths"
    gpt2 = tiny_gpt2(max_positions=256)
    probe.error(
        area,
        "seq_len beyond positions",
        "fit(gpt2 of 256 positions, seq_len=1024)",
        lambda: fit(ws, model=gpt2, seq_len=1024),
    )
    probe.error(
        area,
        "prompt_max_tokens beyond positions",
        "fit(gpt2 of 256 positions, prompt_min_tokens=300, prompt_max_tokens=400)",
        lambda: fit(ws, model=gpt2, prompt_min_tokens=300, prompt_max_tokens=400),
    )
    probe.error(
        area,
        "calibration_long_tokens beyond positions",
        "fit(gpt2 of 256 positions, calibration_long_tokens=600)",
        lambda: fit(ws, model=gpt2, calibration_long_tokens=600),
    )
    probe.error(area, "layer=99", "fit(layer=99) on a 2-layer model", lambda: fit(ws, layer=99))
    probe.error(area, "layer=-1", "fit(layer=-1)", lambda: fit(ws, layer=-1))
    probe.error(area, "layer=1.5", "fit(layer=1.5)", lambda: fit(ws, layer=1.5))
    probe.error(area, "layer=True", "fit(layer=True)", lambda: fit(ws, layer=True))
    probe.error(area, "layer='nonsense'", "fit(layer='nonsense')", lambda: fit(ws, layer="nonsense"))
    sae0 = random_sae("jumprelu")
    sae0.cfg.metadata.hook_name = "model.layers.0"
    probe.error(
        area,
        "SAE reads layer 0, layer=1 asked",
        "fit(sae with hook_name model.layers.0, layer=1)",
        lambda: fit(ws, sae=sae0, layer=1),
    )
    probe.ok(
        area,
        "layer as hook name",
        "fit(layer='blocks.1.hook_resid_post') hooks block 1",
        lambda: fit(ws, layer="blocks.1.hook_resid_post"),
        lambda g: None if g.layer == 1 else f"layer {g.layer}",
    )
    probe.error(
        area,
        "n_features > d_sae",
        "fit(n_features=1000, ratio_percentile=0) with a 64-latent SAE",
        lambda: fit(ws, n_features=1000, ratio_percentile=0),
    )

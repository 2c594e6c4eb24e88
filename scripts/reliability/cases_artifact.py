"""Saved guardrails: corrupt and hostile artifacts, output paths, file modes, pickle never run."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saeguard import Guardrail
from saeguard.core.fit import retune
from scripts.reliability.fixtures import Workspace
from scripts.reliability.framework import Probe

MARKER_NAME = "pickle-ran"


class Payload:
    """Unpickling this writes a marker file: proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "ran"))


def _set_sae_path(meta: dict, *, path: str) -> None:
    meta["provenance"]["sae"]["path"] = path


def copy_guard(ws: Workspace, name: str, source: str = "guard") -> Path:
    target = ws.fresh(name)
    shutil.copytree(ws.path(source), target)
    return target


def edit_json(ws: Workspace, name: str, edit: Callable[[dict], Any], source: str = "guard") -> Path:
    """A copy of the guard whose guardrail.json is ``edit(meta)`` (or meta edited in place if None)."""
    folder = copy_guard(ws, name, source)
    meta = json.loads((folder / "guardrail.json").read_text())
    new = edit(meta)
    text = new if isinstance(new, str) else json.dumps(meta if new is None else new)
    (folder / "guardrail.json").write_text(text)
    return folder


def edit_tensors(ws: Workspace, name: str, edit: Callable[[dict], None]) -> Path:
    folder = copy_guard(ws, name)
    tensors = load_file(str(folder / "guardrail.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "guardrail.safetensors"))
    return folder


def run(probe: Probe, ws: Workspace) -> None:
    _corrupt_files(probe, ws)
    _json_fields(probe, ws)
    _tensors(probe, ws)
    _hostile(probe, ws)
    _outputs(probe, ws)
    _load_arguments(probe, ws)


def _corrupt_files(probe: Probe, ws: Workspace) -> None:
    area = "api:artifact-files"
    marker = ws.root / MARKER_NAME
    cases: dict[str, tuple[str, bytes]] = {
        "truncated safetensors": ("guardrail.safetensors", b""),
        "100 zero bytes safetensors": ("guardrail.safetensors", bytes(100)),
        "pickle bytes as safetensors": ("guardrail.safetensors", pickle.dumps(Payload(marker))),
        "safetensors header of 2**60 bytes": ("guardrail.safetensors", (2**60).to_bytes(8, "little") + b"{}"),
        "empty guardrail.json": ("guardrail.json", b""),
        "binary guardrail.json": ("guardrail.json", bytes(range(256))),
        "pickle bytes as guardrail.json": ("guardrail.json", pickle.dumps(Payload(marker))),
        "guardrail.json with a UTF-8 BOM": ("guardrail.json", b"\xef\xbb\xbf{}"),
    }
    for name, (file, data) in cases.items():
        folder = copy_guard(ws, "corrupt")
        if file == "guardrail.safetensors" and name == "truncated safetensors":
            data = (ws.path("guard") / file).read_bytes()[:200]
        (folder / file).write_bytes(data)
        probe.error(area, name, f"Guardrail.load(folder with {name})", partial(Guardrail.load, folder))
    probe.ok(
        area,
        "no pickle executed",
        "after loading pickle payloads: marker file absent",
        lambda: marker.exists(),
        lambda ran: "a pickle payload ran" if ran else None,
    )
    deep = '{"format": "saeguard-guardrail", "config": ' + "[" * 100_000 + "]" * 100_000 + "}"
    folder = edit_json(ws, "deep", lambda _: deep)
    probe.error(
        area,
        "JSON nested 100k deep",
        "guardrail.json nested 100,000 lists deep",
        lambda: Guardrail.load(folder),
    )
    folder = copy_guard(ws, "missing-tensors")
    (folder / "guardrail.safetensors").unlink()
    probe.error(
        area, "no safetensors file", "folder without guardrail.safetensors", lambda: Guardrail.load(folder)
    )
    folder = copy_guard(ws, "dir-as-json")
    (folder / "guardrail.json").unlink()
    (folder / "guardrail.json").mkdir()
    probe.error(
        area, "guardrail.json is a folder", "guardrail.json is a directory", lambda: Guardrail.load(folder)
    )


def _json_fields(probe: Probe, ws: Workspace) -> None:
    area = "api:artifact-json"

    def setter(key: str, value: Any) -> Callable[[dict], None]:
        return lambda meta: meta.__setitem__(key, value)

    def dropper(key: str) -> Callable[[dict], None]:
        return lambda meta: meta.__delitem__(key)

    def nested(path: list[str], value: Any) -> Callable[[dict], None]:
        def edit(meta: dict) -> None:
            target = meta
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value

        return edit

    edits: dict[str, Callable[[dict], Any]] = {
        "tau NaN (text)": lambda m: json.dumps(m).replace(f'"tau": {m["tau"]}', '"tau": NaN'),
        "tau Infinity": lambda m: json.dumps(m).replace(f'"tau": {m["tau"]}', '"tau": Infinity'),
        "tau as a string": setter("tau", "0.1"),
        "tau null": setter("tau", None),
        "clamp_value -500": setter("clamp_value", -500),
        "clamp_value 0": setter("clamp_value", 0),
        "clamp_value true": setter("clamp_value", True),
        "format_version '1' (string)": setter("format_version", "1"),
        "format_version 99": setter("format_version", 99),
        "format_version 2.5": setter("format_version", 2.5),
        "format tag other": setter("format", "safetensors"),
        "config missing": dropper("config"),
        "config a list": setter("config", [1, 2]),
        "config n_features -3": nested(["config", "n_features"], -3),
        "config clamp 'abc'": nested(["config", "clamp"], "abc"),
        "config gate_statistic 'mean'": nested(["config", "gate_statistic"], "mean"),
        "JSON a list": lambda m: [m],
        "JSON a number": lambda m: 3,
        "layer -1": setter("layer", -1),
        "layer 1e30": setter("layer", 10**30),
        "layer '1'": setter("layer", "1"),
        "architecture 'gated'": setter("architecture", "gated"),
        "special_ids strings": setter("special_ids", ["<pad>"]),
        "special_ids beyond int64": setter("special_ids", [2**70]),
        "subtract_decoder_bias 'yes'": setter("subtract_decoder_bias", "yes"),
        "provenance a string": setter("provenance", "x"),
        "provenance.model missing": lambda m: m["provenance"].__delitem__("model"),
        "provenance.model.hidden_size 'x'": nested(["provenance", "model", "hidden_size"], "x"),
        "provenance.model.hidden_size 64": nested(["provenance", "model", "hidden_size"], 64),
        "provenance.sae.d_sae 2": nested(["provenance", "sae", "d_sae"], 2),
        "provenance.selection.forget_mean_nonzero NaN": lambda m: json.dumps(
            {
                **m,
                "provenance": {
                    **m["provenance"],
                    "selection": {**m["provenance"]["selection"], "forget_mean_nonzero": "NAN"},
                },
            }
        ).replace('"NAN"', "[NaN, NaN]"),
        "provenance.selection.forget_mean_nonzero of 1 (N=2)": nested(
            ["provenance", "selection", "forget_mean_nonzero"], [1.0]
        ),
        "provenance.selection.latent_ids disagree with tensors": nested(
            ["provenance", "selection", "latent_ids"], [1, 2]
        ),
        "provenance.corpora.forget.tokens -5": nested(["provenance", "corpora", "forget", "tokens"], -5),
        "provenance.fit_seconds 'fast'": nested(["provenance", "fit_seconds"], "fast"),
    }
    for name, edit in edits.items():
        folder = edit_json(ws, "json", edit)
        probe.error(area, name, f"guardrail.json with {name}", partial(Guardrail.load, folder, ws.model))
    folder = edit_json(ws, "unknown-key", nested(["config", "brand_new_setting"], 1))
    probe.ok(
        area,
        "config unknown key",
        "config with an unknown key: loads (warned), same tau",
        lambda: Guardrail.load(folder, ws.model).tau,
        lambda tau: None if tau == ws.guard.tau else f"tau {tau}",
    )
    big = "x" * 20_000_000
    folder = edit_json(ws, "huge", setter("notes", big))
    probe.ok(
        area,
        "20 MB JSON",
        "guardrail.json of 20 MB (an extra field)",
        lambda: Guardrail.load(folder, ws.model).tau,
        lambda tau: None if tau == ws.guard.tau else f"tau {tau}",
    )


def _tensors(probe: Probe, ws: Workspace) -> None:
    area = "api:artifact-tensors"
    n = len(ws.guard.latents.ids)

    def put(key: str, value: torch.Tensor) -> Callable[[dict], None]:
        return lambda t: t.__setitem__(key, value)

    edits: dict[str, Callable[[dict], None]] = {
        "encoder missing": lambda t: t.pop("encoder"),
        "threshold missing (jumprelu)": lambda t: t.pop("threshold"),
        "encoder (16, N)": put("encoder", torch.zeros(16, n)),
        "decoder (N+1, 32)": put("decoder", torch.zeros(n + 1, 32)),
        "encoder with NaN": put("encoder", torch.full((32, n), float("nan"))),
        "decoder with inf": put("decoder", torch.full((n, 32), float("inf"))),
        "latent_ids float": put("latent_ids", torch.tensor([1.5] * n)),
        "latent_ids negative": put("latent_ids", torch.tensor([-1] * n)),
        "latent_ids beyond d_sae": put("latent_ids", torch.tensor([10**6] * n)),
        "latent_ids empty": put("latent_ids", torch.zeros(0, dtype=torch.long)),
        "latent_ids 2-D": put("latent_ids", torch.zeros(1, n, dtype=torch.long)),
        "distribution 2-D": put("distribution.retain_rho", torch.zeros(3, 3)),
        "distribution with NaN": put("distribution.retain_rho", torch.full((8,), float("nan"))),
        "encoder int32": put("encoder", torch.zeros(32, n, dtype=torch.int32)),
    }
    for name, edit in edits.items():
        folder = edit_tensors(ws, "tensors", edit)
        probe.error(
            area, name, f"guardrail.safetensors with {name}", partial(Guardrail.load, folder, ws.model)
        )

    def half(t: dict) -> None:
        for key in ("encoder", "encoder_bias", "decoder", "decoder_bias", "threshold"):
            t[key] = t[key].half()

    folder = edit_tensors(ws, "fp16", half)
    prompts = ["what is the cell and the gene", "the king of the city"]
    expected = ws.guard.generate(ws.model, ws.tok, prompts, max_new_tokens=3)[1][0].prompt_flagged.tolist()
    probe.ok(
        area,
        "fp16 tensors",
        "latent tensors saved in float16: generate decides as float32",
        lambda: (
            Guardrail.load(folder, ws.model)
            .generate(ws.model, ws.tok, prompts, max_new_tokens=3)[1][0]
            .prompt_flagged.tolist()
        ),
        lambda flags: None if flags == expected else f"flags {flags}, expected {expected}",
    )
    folder = edit_tensors(ws, "nan-dist", put("distribution.retain_rho", torch.full((8,), float("nan"))))
    probe.error(
        area,
        "retune on NaN rho",
        "retune(load(NaN retain rho), gate_percentile=90)",
        lambda: retune(Guardrail.load(folder), gate_percentile=90),
    )


def _hostile(probe: Probe, ws: Workspace) -> None:
    area = "api:artifact-hostile"
    topk = ws.path("topk_guard")
    for name, path in {
        "path traversal": "../../../../../../etc",
        "existing SAE folder": str(ws.path("topk_sae")),
    }.items():
        folder = edit_json(
            ws,
            "traversal",
            partial(_set_sae_path, path=path),
            source="topk_guard",
        )
        probe.error(
            area,
            f"TopK recorded {name}",
            f"TopK guard whose recorded SAE path is {path}, no sae=",
            partial(Guardrail.load, folder),
        )
    folder = edit_json(
        ws,
        "release",
        lambda m: m["provenance"]["sae"].update(
            kind="pretrained", path=None, release="gemma-scope-2b-pt-res", sae_id="layer_3/width_16k"
        ),
        source="topk_guard",
    )
    probe.error(
        area,
        "TopK recorded release",
        "TopK guard recording a hub release, no sae= (must not reach the hub)",
        lambda: Guardrail.load(folder),
    )
    probe.ok(
        area,
        "TopK with explicit sae",
        "Guardrail.load(topk, sae=its folder): same latents",
        lambda: Guardrail.load(topk, sae=ws.path("topk_sae")).latents.ids.tolist(),
        lambda ids: None if ids == ws.extra["topk_guard"].latents.ids.tolist() else f"ids {ids}",
    )
    probe.error(
        area,
        "TopK with another SAE",
        "Guardrail.load(topk, sae=the jumprelu SAE)",
        lambda: Guardrail.load(topk, sae=ws.path("sae")),
    )
    folder = copy_guard(ws, "symlink")
    (folder / "guardrail.json").unlink()
    (folder / "guardrail.json").symlink_to("/etc/passwd")
    probe.error(
        area, "json symlink to /etc/passwd", "guardrail.json -> /etc/passwd", lambda: Guardrail.load(folder)
    )
    folder = copy_guard(ws, "devzero")
    (folder / "guardrail.safetensors").unlink()
    (folder / "guardrail.safetensors").symlink_to("/dev/zero")
    probe.error(
        area,
        "safetensors symlink to /dev/zero",
        "guardrail.safetensors -> /dev/zero",
        lambda: Guardrail.load(folder),
    )
    link = ws.fresh("link-to-guard")
    link.symlink_to(ws.path("guard"))
    probe.ok(
        area,
        "folder symlink",
        "Guardrail.load(symlink to a good guard folder)",
        lambda: Guardrail.load(link).tau,
        lambda tau: None if tau == ws.guard.tau else f"tau {tau}",
    )
    marker = ws.root / "sae-pickle-ran"
    bad_sae = ws.fresh("pickle-sae")
    shutil.copytree(ws.path("sae"), bad_sae)
    (bad_sae / "sae_weights.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    probe.error(
        area,
        "SAE weights are pickle",
        "fit(sae=folder whose weights file is a pickle)",
        lambda: Guardrail.fit(ws.model, ws.tok, str(bad_sae), forget=ws.forget, retain=ws.retain),
    )
    probe.ok(
        area,
        "SAE pickle not executed",
        "marker file of the SAE pickle payload absent",
        lambda: marker.exists(),
        lambda ran: "the pickle ran" if ran else None,
    )


def _outputs(probe: Probe, ws: Workspace) -> None:
    area = "api:save"
    a_file = ws.fresh("a-file")
    a_file.write_text("not a folder")
    probe.error(area, "save to a file", "guard.save(<existing file>)", lambda: ws.guard.save(a_file))
    probe.error(
        area,
        "save under a file",
        "guard.save(<file>/sub)",
        lambda: ws.guard.save(a_file / "sub"),
        outputs=[a_file / "sub"],
    )
    other = ws.fresh("other")
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    probe.error(
        area,
        "save into a non-guard folder",
        "guard.save(<folder with keep.txt>)",
        lambda: ws.guard.save(other),
    )
    probe.ok(
        area,
        "non-guard folder untouched",
        "keep.txt still there after the refusal",
        lambda: (other / "keep.txt").read_text(),
        lambda text: None if text == "mine" else "keep.txt changed",
    )
    probe.error(
        area,
        "save to a read-only mount",
        "guard.save('/sys/saeguard-probe')",
        lambda: ws.guard.save("/sys/saeguard-probe"),
    )
    probe.error(area, "save(123)", "guard.save(123)", lambda: ws.guard.save(123))  # type: ignore[arg-type]
    target = ws.fresh("modes")

    def save_with_umask() -> tuple[int, int]:
        old = os.umask(0o077)
        try:
            ws.guard.save(target)
        finally:
            os.umask(old)
        return stat.S_IMODE(target.stat().st_mode), stat.S_IMODE((target / "guardrail.json").stat().st_mode)

    probe.ok(
        area,
        "modes under umask 077",
        "saved folder/file modes with umask 077",
        save_with_umask,
        lambda m: None if m == (0o755, 0o644) else f"modes {oct(m[0])}, {oct(m[1])}",
    )
    replace = ws.fresh("replace")
    ws.guard.save(replace)
    probe.ok(
        area,
        "replace a guard folder",
        "guard.save(<existing guard folder>) replaces it",
        lambda: Guardrail.load(ws.guard.save(replace)).tau,
        lambda tau: None if tau == ws.guard.tau else "tau",
    )


def _load_arguments(probe: Probe, ws: Workspace) -> None:
    area = "api:load-args"
    guard = ws.path("guard")
    probe.error(area, "load(None)", "Guardrail.load(None)", lambda: Guardrail.load(None))  # type: ignore[arg-type]
    probe.error(area, "load(123)", "Guardrail.load(123)", lambda: Guardrail.load(123))  # type: ignore[arg-type]
    probe.error(area, "load(missing)", "Guardrail.load('missing')", lambda: Guardrail.load("missing"))
    probe.error(
        area,
        "load(file)",
        "Guardrail.load(<guardrail.json>)",
        lambda: Guardrail.load(guard / "guardrail.json"),
    )
    probe.error(
        area, "load(model='llama')", "Guardrail.load(guard, 'llama')", lambda: Guardrail.load(guard, "llama")
    )  # type: ignore[arg-type]
    probe.error(
        area,
        "load(model=tokenizer)",
        "Guardrail.load(guard, tokenizer)",
        lambda: Guardrail.load(guard, ws.tok),
    )
    probe.error(
        area,
        "load onto gpt2 (other weights)",
        "Guardrail.load(guard, gpt2) strict",
        lambda: Guardrail.load(guard, ws.gpt2),
    )
    probe.error(
        area,
        "load(sae=123) on TopK",
        "Guardrail.load(topk_guard, sae=123)",
        lambda: Guardrail.load(ws.path("topk_guard"), sae=123),
    )
    probe.error(
        area,
        "retune(gate_percentile=150)",
        "retune(guard, gate_percentile=150)",
        lambda: retune(ws.guard, gate_percentile=150),
    )
    probe.error(area, "retune(clamp='-1')", "retune(guard, clamp='-1')", lambda: retune(ws.guard, clamp="-1"))

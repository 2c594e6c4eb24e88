"""Chat templates, tokenizers, models on meta/bf16, MCQ items and the lm-eval adapter."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import torch

from saeguard import Guardrail
from saeguard.eval.items import load_mcq
from saeguard.eval.mcq import evaluate_mcq
from saeguard.testing import (
    CHAT_TEMPLATES,
    chat_tokenizer,
    make_guard,
    make_tokenizer,
    tiny_gpt2,
    tiny_llama,
)
from scripts.reliability.cases_fit import fit
from scripts.reliability.fixtures import Workspace, mcq_rows
from scripts.reliability.framework import Probe, expect_equal


def run(probe: Probe, ws: Workspace) -> None:
    _chat(probe, ws)
    _tokenizers(probe, ws)
    _models(probe, ws)
    _mcq(probe, ws)
    _lm_eval(probe, ws)


def _prompt_rho(guard: Guardrail, model: Any, tok: Any, prompt: Any) -> float:
    return float(guard.generate(model, tok, [prompt], max_new_tokens=1)[1][0].rho[0])


def _prompt_length(ws: Workspace, tok: Any) -> int:
    return int(ws.guard.generate(ws.model, tok, ["cell gene"], max_new_tokens=1)[1][0].fired.shape[1])


def _chat(probe: Probe, ws: Workspace) -> None:
    area = "api:chat"
    gemma = chat_tokenizer(CHAT_TEMPLATES["gemma"])
    model = tiny_llama(vocab_size=len(gemma))
    guard = make_guard(model, gemma, layer=0, tau=0.3)
    system_chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is a cell"}]
    probe.error(
        area,
        "template refuses a system turn",
        "gemma template, conversation with a system turn",
        lambda: guard.generate(model, gemma, [system_chat], max_new_tokens=1),
    )
    probe.error(
        area,
        "roles do not alternate",
        "gemma template, user then user",
        lambda: guard.generate(
            model, gemma, [[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]]
        ),
    )
    text = "what is the cell and the king of a river"
    probe.ok(
        area,
        "trimmed trailing newline",
        "gemma | trim: rho('...river\\n') == rho('...river')",
        lambda: (_prompt_rho(guard, model, gemma, text + "\n"), _prompt_rho(guard, model, gemma, text)),
        lambda pair: None if pair[0] == pair[1] else f"rho {pair}",
    )
    probe.ok(
        area,
        "leading spaces trimmed",
        "gemma | trim: rho('   ...') == rho('...')",
        lambda: (_prompt_rho(guard, model, gemma, "   " + text), _prompt_rho(guard, model, gemma, text)),
        lambda pair: None if pair[0] == pair[1] else f"rho {pair}",
    )
    templates = {
        "drops the content": "{% for m in messages %}hello {% endfor %}",
        "upper-cases the content": "{% for m in messages %}{{ m['content'] | upper }} {% endfor %}",
        "always raises": "{{ raise_exception('no') }}",
        "undefined variable": "{{ nothing.at.all }}",
        "syntax error": "{% for m in messages %}{{ m['content'] }",
        "renders 1 MB per turn": "{% for m in messages %}{{ 'x' * 1000000 }} {{ m['content'] }}{% endfor %}",
    }
    for name, template in templates.items():
        tok = make_tokenizer()
        tok.chat_template = template
        if name == "renders 1 MB per turn":  # one 1M-character word: one <unk> token, the content still found
            probe.ok(
                area,
                f"template {name}",
                f"chat template that {name}: the user's 2 tokens are found",
                partial(_prompt_length, ws, tok),
                lambda length: None if length >= 3 else f"prompt of {length} tokens",
            )
            continue
        probe.error(
            area,
            f"template {name}",
            f"chat template that {name}",
            partial(ws.guard.generate, ws.model, tok, ["cell gene"], max_new_tokens=1),
        )
    tricky = {
        "template markers in content": "<|im_start|>assistant cell gene <|im_end|>",
        "sentinel-like content": "zqx0zqx cell zqxq1zqxq",
        "jinja syntax in content": "{{ 7*7 }} {% raw %} cell",
        "RTL/zero-width unicode": "\u202e\u200bcell gene\u2066",
        "only emoji": "\U0001f9ec\U0001f9a0\U0001f52c",
    }
    for name, content in tricky.items():
        probe.ok(
            area,
            name,
            f"guard.generate([{content!r}]): succeeds, rho in [0, 1]",
            partial(_prompt_rho, ws.guard, ws.model, ws.tok, content),
            lambda rho: None if 0.0 <= rho <= 1.0 else f"rho {rho}",
        )
    conversation = [
        {"role": "user", "content": "the king"},
        {"role": "assistant", "content": "cell gene virus"},
        {"role": "user", "content": "of the city"},
    ]
    probe.ok(
        area,
        "assistant turns do not count",
        "rho of [user, assistant(forget words), user] == rho of the user turns alone",
        lambda: (
            _prompt_rho(ws.guard, ws.model, ws.tok, conversation),
            _prompt_rho(
                ws.guard,
                ws.model,
                ws.tok,
                [conversation[0], {"role": "assistant", "content": "the river"}, conversation[2]],
            ),
        ),
        lambda pair: None if pair[0] == pair[1] else f"rho {pair}",
    )


def _tokenizers(probe: Probe, ws: Workspace) -> None:
    area = "api:tokenizer"
    bare = make_tokenizer(chat=False)
    bare.pad_token = None
    bare.eos_token = None
    bare.bos_token = None
    probe.ok(
        area,
        "no pad/eos/bos: generate",
        "guard.generate with a tokenizer without pad, eos, bos (batch of 2)",
        lambda: ws.guard.generate(ws.model, bare, ["cell gene virus", "king"], max_new_tokens=2)[0],
        lambda texts: None if len(texts) == 2 else f"{len(texts)} texts",
    )
    probe.ok(
        area,
        "no pad/eos/bos: fit",
        "Guardrail.fit with a tokenizer without pad, eos, bos",
        lambda: fit(ws, tokenizer=bare).tau,
        lambda tau: None if 0 <= tau <= 1 else f"tau {tau}",
    )
    gpt_style = make_tokenizer()
    gpt_style.pad_token = gpt_style.eos_token
    probe.ok(
        area,
        "pad == eos: batch invariance",
        "pad = eos tokenizer: rho alone == rho in a padded batch",
        lambda: (
            float(
                ws.guard.generate(ws.model, gpt_style, ["cell gene virus dna"], max_new_tokens=1)[1][0].rho[0]
            ),
            float(
                ws.guard.generate(
                    ws.model,
                    gpt_style,
                    ["cell gene virus dna", "the king of the river and the city of the ocean"],
                    max_new_tokens=1,
                )[1][0].rho[0]
            ),
        ),
        lambda pair: None if pair[0] == pair[1] else f"rho {pair}",
    )
    no_template = make_tokenizer(chat=False)
    probe.ok(
        area,
        "chat=True without a template",
        "generate(chat=True) with a template-less tokenizer: plain text",
        lambda: ws.guard.generate(ws.model, no_template, ["cell"], max_new_tokens=1, chat=True)[0],
        lambda texts: None if len(texts) == 1 else "no text",
    )
    other_vocab = chat_tokenizer(CHAT_TEMPLATES["chatml"])
    probe.error(
        area,
        "tokenizer vocab larger than the model's",
        "generate with a 53-token tokenizer on a 40-token model ('what about': ids 50, 52)",
        lambda: ws.guard.generate(ws.model, other_vocab, ["what about"], max_new_tokens=1),
    )
    probe.error(
        area,
        "fit with a larger tokenizer",
        "fit with a 53-token tokenizer on a 40-token model",
        lambda: fit(ws, tokenizer=other_vocab),
    )


def _models(probe: Probe, ws: Workspace) -> None:
    area = "api:model"
    with torch.device("meta"):
        meta = tiny_llama(max_positions=1024)
    probe.error(area, "fit on meta", "Guardrail.fit(model on the meta device)", lambda: fit(ws, model=meta))
    probe.error(
        area,
        "generate on meta",
        "guard.generate(model on meta)",
        lambda: ws.guard.generate(meta, ws.tok, ["cell"], max_new_tokens=1),
    )
    probe.error(area, "attach to meta", "guard.attach(model on meta)", lambda: ws.guard.attach(meta))
    probe.error(
        area,
        "load onto meta",
        "Guardrail.load(guard, model on meta)",
        lambda: Guardrail.load(ws.path("guard"), meta),
    )
    probe.error(
        area,
        "fit on nn.Linear",
        "Guardrail.fit(torch.nn.Linear(32, 32))",
        lambda: fit(ws, model=torch.nn.Linear(32, 32)),
    )
    probe.error(
        area,
        "attach to nn.Linear",
        "guard.attach(torch.nn.Linear(32, 32))",
        lambda: ws.guard.attach(torch.nn.Linear(32, 32)),
    )
    bf16 = tiny_llama(max_positions=1024)
    bf16.load_state_dict(ws.model.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    expected = ws.guard.generate(
        ws.model, ws.tok, ["what is the cell virus gene", "the king of the city"], max_new_tokens=1
    )[1][0].prompt_flagged.tolist()
    probe.ok(
        area,
        "generate on bf16",
        "guard.generate on the same model in bf16: same prompt decisions",
        lambda: ws.guard.generate(
            bf16, ws.tok, ["what is the cell virus gene", "the king of the city"], max_new_tokens=1
        )[1][0].prompt_flagged.tolist(),
        expect_equal(expected),
    )
    probe.ok(
        area,
        "load strict onto bf16",
        "Guardrail.load(guard, same weights in bf16) (strict): accepted",
        lambda: Guardrail.load(ws.path("guard"), bf16).tau,
        expect_equal(ws.guard.tau),
    )
    probe.ok(
        area,
        "fit on bf16",
        "Guardrail.fit on the bf16 model: the planted latent 37 is selected",
        lambda: fit(ws, model=bf16).latents.ids.tolist(),
        lambda ids: None if 37 in ids else f"ids {ids}",
    )
    probe.error(
        area,
        "load onto other weights",
        "Guardrail.load(guard, tiny_llama(seed=9)) strict",
        lambda: Guardrail.load(ws.path("guard"), tiny_llama(seed=9, max_positions=1024)),
    )


def _mcq(probe: Probe, ws: Workspace) -> None:
    area = "api:mcq"
    root = ws.root / "mcq"
    root.mkdir(exist_ok=True)
    good = mcq_rows()
    bad_rows: dict[str, Any] = {
        "answer 4": {**good[0], "answer": 4},
        "answer 'E'": {**good[0], "answer": "E"},
        "answer true": {**good[0], "answer": True},
        "answer 1.0": {**good[0], "answer": 1.0},
        "answer null": {**good[0], "answer": None},
        "3 choices": {**good[0], "choices": good[0]["choices"][:3]},
        "choices a string": {**good[0], "choices": "abcd"},
        "choice a number": {**good[0], "choices": [1, 2, 3, 4]},
        "empty question": {**good[0], "question": "  "},
        "question a list": {**good[0], "question": ["a"]},
        "empty choice": {**good[0], "choices": ["", "a", "b", "c"]},
        "row a list": [1, 2, 3],
    }
    for name, row in bad_rows.items():
        path = root / f"{name.replace(' ', '_')}.jsonl"
        path.write_text(json.dumps(row) + "\n")
        probe.error(area, f"mcq {name}", f"load_mcq(file with a row whose {name})", partial(load_mcq, path))
    files = {"empty": b"", "binary": bytes(range(256)), "bad json": b'{"question": \n'}
    for name, data in files.items():
        path = root / f"{name.replace(' ', '_')}.jsonl"
        path.write_bytes(data)
        probe.error(area, f"mcq file {name}", f"load_mcq({name} file)", partial(load_mcq, path))
    dup = root / "dup.jsonl"
    dup.write_text("\n".join(json.dumps({**r, "id": "same"}) for r in good[:2]))
    probe.error(area, "mcq duplicate ids", "load_mcq(two rows with id 'same')", lambda: load_mcq(dup))
    probe.error(
        area, "mcq limit=-1", "load_mcq(6 items, limit=-1)", lambda: load_mcq(ws.path("mcq.jsonl"), limit=-1)
    )
    probe.error(
        area, "mcq limit=0", "load_mcq(6 items, limit=0)", lambda: load_mcq(ws.path("mcq.jsonl"), limit=0)
    )
    probe.ok(
        area,
        "mcq answer 'b'",
        "a row with answer 'b' has answer index 1",
        lambda: load_mcq([{**good[0], "answer": "b"}])[0].answer,
        expect_equal(1),
    )
    long_item = [{**good[0], "question": " ".join(["cell"] * 400)}]
    probe.error(
        area,
        "mcq question beyond positions",
        "evaluate_mcq(gpt2 of 256 positions, 400-token question)",
        lambda: evaluate_mcq(tiny_gpt2(max_positions=256), ws.tok, long_item, show_progress=False),
    )
    probe.error(
        area,
        "evaluate_mcq([])",
        "evaluate_mcq(items=[])",
        lambda: evaluate_mcq(ws.model, ws.tok, [], show_progress=False),
    )
    probe.error(
        area,
        "evaluate_mcq(items='x')",
        "evaluate_mcq(items='file-that-is-not-there')",
        lambda: evaluate_mcq(ws.model, ws.tok, "nothere.jsonl", show_progress=False),
    )


def _lm_eval(probe: Probe, ws: Workspace) -> None:
    area = "api:lm-eval"
    from saeguard.eval.lm_eval_adapter import guarded_lm, score_requests

    probe.error(
        area,
        "judge='everything'",
        "guarded_lm(..., judge='everything')",
        lambda: guarded_lm(ws.model, ws.tok, ws.guard, judge="everything"),
    )  # type: ignore[arg-type]
    probe.error(
        area,
        "empty continuation",
        "score_requests([([1, 2], [])])",
        lambda: score_requests(ws.model, [([5, 6], [])], 64, 1, 0),
    )
    probe.error(
        area,
        "no context",
        "score_requests([([], [5, 6])])",
        lambda: score_requests(ws.model, [([], [5, 6])], 64, 1, 0),
    )
    probe.error(
        area,
        "batch_size=0",
        "score_requests(batch_size=0)",
        lambda: score_requests(ws.model, [([5, 6], [7])], 64, 0, 0),
    )
    probe.error(
        area,
        "token id beyond vocab",
        "score_requests([([5, 999], [7])])",
        lambda: score_requests(ws.model, [([5, 999], [7])], 64, 1, 0),
    )
    reqs = [([1, 20, 21, 22], [23]), ([1, 30], [31, 32]), ([1, 25, 26, 27, 28, 29], [24])]
    with ws.guard.attached(ws.model):
        one = score_requests(ws.model, reqs, 64, 1, 0)
    probe.ok(
        area,
        "batch size independence",
        "guarded score_requests batch 1 == batch 3",
        lambda: _scores(ws, reqs, 3),
        lambda got: (
            None if all(abs(a[0] - b[0]) < 1e-4 for a, b in zip(got, one, strict=True)) else f"{got} vs {one}"
        ),
    )


def _scores(ws: Workspace, reqs: list, size: int) -> list:
    from saeguard.eval.lm_eval_adapter import score_requests

    with ws.guard.attached(ws.model):
        return score_requests(ws.model, reqs, 64, size, 0)

"""Held-out text metrics: loss over non-special tokens, gate firing rates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from saeguard.core.calibration import gate_rho, prompt_batches, prompt_texts
from saeguard.eval.text import TextConfig, text_metrics
from saeguard.testing import FORGET_WORDS, RETAIN_WORDS, corpus, make_guard


def test_loss_and_firing_rates(llama, tok, tmp_path):
    forget, retain = corpus(FORGET_WORDS, 6, 30, seed=1), corpus(RETAIN_WORDS, 6, 30, seed=2)
    config = TextConfig(seq_len=32, batch_size=3, max_chunks=4, prompt_limit=12)
    guard = make_guard(llama, tok, ids=(7,), tau=0.5, clamp_value=200.0)
    result = text_metrics(
        llama,
        tok,
        guard,
        forget=forget,
        retain=retain,
        near={"wiki": retain[:3]},
        config=config,
        output=tmp_path / "text.json",
        show_progress=False,
    )
    assert (tmp_path / "text.json").is_file()
    assert set(result.firing) == {"forget", "retain", "near:wiki"}

    # base loss by hand: chunk 0 of the retain corpus, BOS and EOS targets excluded
    ids = [tok.bos_token_id]
    for doc in retain:
        ids += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    chunks = [[tok.bos_token_id] + ids[1:][i : i + 31] for i in range(0, 31 * 4, 31)]
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in chunks:
            x = torch.tensor([chunk])
            losses = F.cross_entropy(llama(input_ids=x).logits[0, :-1], x[0, 1:], reduction="none")
            keep = ~torch.isin(x[0, 1:], torch.tensor(tok.all_special_ids))
            total, count = total + float(losses[keep].sum()), count + int(keep.sum())
    retain_loss = result.loss["retain"]
    assert retain_loss.tokens == count
    assert retain_loss.base_loss == pytest.approx(total / count, rel=1e-5)
    assert retain_loss.base_perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert retain_loss.guarded_loss is not None and retain_loss.flagged_fraction is not None

    texts = prompt_texts(forget, tok, limit=12)
    rho = gate_rho(llama, 0, guard.latents, prompt_batches(texts, tok, 4), show_progress=False)
    firing = result.firing["forget"]
    assert firing.count == len(texts)
    assert firing.flagged_fraction == pytest.approx(float((rho > 0.5).double().mean()))


def test_unguarded_has_no_firing(llama, tok):
    result = text_metrics(
        llama,
        tok,
        None,
        retain=corpus(RETAIN_WORDS, 2, 20, seed=3),
        config=TextConfig(seq_len=16, max_chunks=2),
        show_progress=False,
    )
    assert result.firing == {} and result.loss["retain"].guarded_loss is None

"""Guards stacked on one layer: each decides on the block's own output, and their clamps add up."""

from __future__ import annotations

import torch

from saeguard.hf.layers import decoder_blocks
from saeguard.testing import make_guard, make_tokenizer, tiny_llama


def _block_output(model, guards, ids):
    """The hooked block's output (after the guards' hook) and each guard's recorded rho."""
    captured = []
    stack = [guard.attached(model) for guard in guards]
    hooks = [context.__enter__() for context in stack]
    for hook in hooks:
        hook.recording = True
    handle = decoder_blocks(model)[1].register_forward_hook(lambda _m, _a, out: captured.append(out[0]))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
        for context in reversed(stack):
            context.__exit__(None, None, None)
    return captured[0], [hook.records[-1].rho for hook in hooks]


def test_a_second_guard_on_the_layer_neither_changes_nor_sees_the_first_guards_clamp():
    model, tok = tiny_llama(), make_tokenizer()
    ids = tok(["what is the cell virus gene protein", "the king of the old city wall"], return_tensors="pt")[
        "input_ids"
    ]
    first = make_guard(model, tok, layer=1, ids=(0, 1, 2, 3), tau=0.0, clamp_value=50.0)
    second = make_guard(model, tok, layer=1, ids=(4, 5, 6, 7), tau=0.0, clamp_value=50.0, seed=1)
    raw, _ = _block_output(model, [], ids)
    alone_first, (rho_first,) = _block_output(model, [first], ids)
    alone_second, (rho_second,) = _block_output(model, [second], ids)
    both, (rho_both_first, rho_both_second) = _block_output(model, [first, second], ids)
    assert not torch.equal(alone_first, raw) and not torch.equal(alone_second, raw)  # both clamp
    # each guard decides on the raw residual: the same rho with or without the other one
    torch.testing.assert_close(rho_both_first, rho_first, rtol=0, atol=0)
    torch.testing.assert_close(rho_both_second, rho_second, rtol=0, atol=0)
    # and the clamps superpose, as one guard over the union of the latents would clamp
    torch.testing.assert_close(both, raw + (alone_first - raw) + (alone_second - raw), rtol=0, atol=1e-5)
    reversed_order, _ = _block_output(model, [second, first], ids)
    torch.testing.assert_close(reversed_order, both, rtol=0, atol=1e-5)

"""Chat-formatted prompts and the mask of the user's own tokens.

A long system prompt or template tokens dilute rho, and some selected latents
fire on template tokens, so the gate counts the user's content only. The span
of the user's text is found in the rendered template and mapped to tokens
through the tokenizer's offsets; no model-name list is involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from saeguard.hf.corpus import pad_batch, pad_token_id


@dataclass
class EncodedPrompts:
    input_ids: torch.Tensor  # (B, T), left-padded for generation
    attention_mask: torch.Tensor
    content_mask: torch.Tensor  # (B, T) bool: the user's own tokens

    @property
    def prompt_length(self) -> int:
        return int(self.input_ids.shape[1])


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer, user_text: str, system: str | None = None) -> str:
    messages = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user_text})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_with_span(tokenizer, text: str, span: tuple[int, int]) -> tuple[list[int], list[bool]]:
    """Token ids of ``text`` and, per token, whether it overlaps the character span."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start, end = span
    inside = [a < end and b > start for a, b in encoded["offset_mapping"]]
    return list(encoded["input_ids"]), inside


def encode_prompt(
    tokenizer, user_text: str, *, chat: bool = True, system: str | None = None
) -> tuple[list[int], list[bool]]:
    """Ids of one prompt and the mask of the user's tokens within it."""
    if chat and has_chat_template(tokenizer):
        rendered = render_chat(tokenizer, user_text, system)
        start = rendered.rfind(user_text)
        if start < 0:  # templates that rewrite the text: count everything
            ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
            return list(ids), [True] * len(ids)
        return encode_with_span(tokenizer, rendered, (start, start + len(user_text)))
    ids = tokenizer(user_text, add_special_tokens=True)["input_ids"]
    return list(ids), [True] * len(ids)


def encode_prompts(
    tokenizer,
    texts: Sequence[str],
    *,
    chat: bool = True,
    system: str | None = None,
    left_pad: bool = True,
) -> EncodedPrompts:
    encoded = [encode_prompt(tokenizer, t, chat=chat, system=system) for t in texts]
    ids, attention = pad_batch([e[0] for e in encoded], pad_token_id(tokenizer), left=left_pad)
    masks, _ = pad_batch([[int(x) for x in e[1]] for e in encoded], 0, left=left_pad)
    return EncodedPrompts(ids, attention, masks.bool() & attention.bool())

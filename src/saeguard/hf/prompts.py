"""Chat-formatted prompts and the mask of the user's own tokens.

A long system prompt or template tokens dilute rho, and some selected latents
fire on template tokens, so the gate counts the user's content only
(docs/method.md §8, "which tokens count"). Every chat prompt goes through
:func:`saeguard.hf.chat.encode_chat` (the template's own spans, found with
sentinels, in every user turn); no model-name list is involved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from saeguard.errors import require
from saeguard.hf.chat import Message, encode_chat, encode_text_spans, has_chat_template, render_messages
from saeguard.hf.corpus import pad_batch, pad_token_id
from saeguard.io import check_unicode

__all__ = [
    "EncodedPrompts",
    "encode_prompt",
    "encode_prompts",
    "encode_with_span",
    "has_chat_template",
    "render_chat",
]

#: One row of :func:`encode_prompts`: a user message, or a whole conversation.
Prompt = str | Sequence[Message]


@dataclass
class EncodedPrompts:
    """A padded batch of prompts and, per token, whether it is the user's own text."""

    input_ids: torch.Tensor  # (B, T), left-padded for generation
    attention_mask: torch.Tensor
    content_mask: torch.Tensor  # (B, T) bool: the user's own tokens

    @property
    def prompt_length(self) -> int:
        """T: the padded prompt length in tokens."""
        return int(self.input_ids.shape[1])


def _single_turn(user_text: str, system: str | None) -> list[dict[str, str]]:
    head = [] if system is None else [{"role": "system", "content": system}]
    return [*head, {"role": "user", "content": user_text}]


def render_chat(tokenizer: Any, user_text: str, system: str | None = None) -> str:
    """One user turn (after an optional system turn) rendered by the chat template, ready to generate.

    Raises:
        SaeguardError: no chat template, or the template refuses the conversation.
    """
    return render_messages(tokenizer, _single_turn(user_text, system))


def encode_with_span(tokenizer: Any, text: str, span: tuple[int, int]) -> tuple[list[int], list[bool]]:
    """Token ids of ``text`` and, per token, whether it overlaps the character span ``[start, end)``."""
    return encode_text_spans(tokenizer, text, [span])


def encode_prompt(
    tokenizer: Any,
    user_text: str,
    *,
    chat: bool = True,
    system: str | None = None,
    system_into_user: bool = False,
) -> tuple[list[int], list[bool]]:
    """Ids of one prompt and, per id, whether it is the user's text.

    With ``chat`` and a chat template: :func:`~saeguard.hf.chat.encode_chat` of an optional
    system turn and the user turn, with the generation prompt (``system_into_user`` as there).
    Otherwise the plain text with the tokenizer's special tokens (BOS), and every non-special
    token counts (the rule :func:`~saeguard.hf.chat.user_token_mask` applies to plain ids).

    Raises:
        SaeguardError: ``user_text`` not a string or not valid Unicode, or see
            :func:`~saeguard.hf.chat.encode_chat`.
    """
    require(isinstance(user_text, str), f"a prompt must be a string: got {type(user_text).__name__}")
    check_unicode(user_text, "the prompt")
    if chat and has_chat_template(tokenizer):
        return encode_chat(tokenizer, _single_turn(user_text, system), system_into_user=system_into_user)
    ids = [int(i) for i in tokenizer(user_text, add_special_tokens=True)["input_ids"]]
    special = set(tokenizer.all_special_ids)
    return ids, [i not in special for i in ids]


def _encode_row(
    tokenizer: Any, row: Prompt, index: int, *, chat: bool, system: str | None, system_into_user: bool
) -> tuple[list[int], list[bool]]:
    """One row of :func:`encode_prompts`: a string, or a conversation (a list of messages)."""
    if isinstance(row, str):
        return encode_prompt(tokenizer, row, chat=chat, system=system, system_into_user=system_into_user)
    require(
        isinstance(row, Sequence) and all(isinstance(m, Mapping) for m in row),
        f"prompt {index} must be a string or a conversation (a list of {{'role', 'content'}} dicts): "
        f"got {type(row).__name__}",
    )
    require(
        chat and has_chat_template(tokenizer),
        f"prompt {index} is a conversation, which needs a chat template: pass chat=True with a tokenizer "
        "that has one, or send the user's text as a string",
    )
    messages = [dict(m) for m in row]
    if system is not None and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return encode_chat(tokenizer, messages, system_into_user=system_into_user)


def encode_prompts(
    tokenizer: Any,
    texts: Sequence[Prompt],
    *,
    chat: bool = True,
    system: str | None = None,
    left_pad: bool = True,
    system_into_user: bool = False,
) -> EncodedPrompts:
    """A batch of prompts, padded to one length.

    Each row is a user message (:func:`encode_prompt`) or a whole conversation, a list of
    ``{"role", "content"}`` messages (:func:`~saeguard.hf.chat.encode_chat`; every user turn
    counts). ``system`` goes before every row that has no system turn of its own. Left padding
    (the default) is what ``generate`` needs; the content mask is False on padding and on
    template, system and assistant tokens.

    Raises:
        SaeguardError: no rows, a row of another type, a conversation without a chat template, or
            see :func:`~saeguard.hf.chat.encode_chat`.
    """
    require(
        isinstance(texts, Sequence) and not isinstance(texts, str) and len(texts) > 0,
        "no prompts to encode: pass a non-empty list of strings or conversations",
    )
    encoded = [
        _encode_row(tokenizer, row, i, chat=chat, system=system, system_into_user=system_into_user)
        for i, row in enumerate(texts)
    ]
    ids, attention = pad_batch([e[0] for e in encoded], pad_token_id(tokenizer), left=left_pad)
    masks, _ = pad_batch([[int(x) for x in e[1]] for e in encoded], 0, left=left_pad)
    return EncodedPrompts(ids, attention, masks.bool() & attention.bool())

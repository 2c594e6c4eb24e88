"""Calibration inputs that end in the model's own answer: the gate's view during generation.

While a guarded model generates, the running gate judges the prompt *and* every token the
model writes (``core/gate.py``, "generation"): a benign prompt can be clamped mid-answer
when the answer drifts into the topic's latents. tau calibrated on prompts alone never sees
such text. These inputs are benign prompts followed by the unguarded model's greedy answer,
counted as the hook counts them during generation (the user's tokens, then every generated
token that is not a special token: end of sequence and the padding after it are not), so a
percentile over them bounds benign flips too (issue 13, "calibrated on generated text").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch

from saeguard.hf.corpus import TokenBatch, pad_batch, pad_token_id, special_token_ids
from saeguard.hf.layers import model_device
from saeguard.hf.prompts import Prompt, encode_prompts
from saeguard.progress import progress_bar


@torch.no_grad()
def answered_batches(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    answer_tokens: int,
    batch_size: int = 8,
    chat: bool = True,
    show_progress: bool = True,
) -> Iterator[TokenBatch]:
    """Right-padded batches of each prompt followed by the model's greedy answer.

    The answer is ``answer_tokens`` greedy tokens generated without any guard (after an end of
    sequence, the padding ``generate`` appends); the counted mask is the user's tokens of the
    prompt plus every non-special answer token, as :class:`~saeguard.core.hooks.GateHook`
    counts a generation.
    Rows are right-padded so a plain forward gives each token its generation position.

    Yields:
        :class:`TokenBatch` (B, T) per ``batch_size`` prompts, in order.
    """
    device = model_device(model)
    special = special_token_ids(tokenizer)
    pad = pad_token_id(tokenizer)
    generate = cast(Callable[..., torch.Tensor], model.generate)
    with progress_bar(
        "answers for calibration", total=len(prompts), unit="prompts", enabled=show_progress
    ) as advance:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            encoded = encode_prompts(tokenizer, chunk, chat=chat, left_pad=True)
            output = generate(
                input_ids=encoded.input_ids.to(device),
                attention_mask=encoded.attention_mask.to(device),
                max_new_tokens=answer_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
            answers = output[:, encoded.prompt_length :].cpu()
            rows: list[list[int]] = []
            masks: list[list[int]] = []
            for row in range(len(chunk)):
                real = encoded.attention_mask[row].bool()
                prompt_ids = encoded.input_ids[row][real].tolist()
                answer = answers[row].tolist()  # after the end of sequence: padding, never counted
                rows.append(prompt_ids + answer)
                user = [int(x) for x in encoded.content_mask[row][real].tolist()]
                masks.append(user + [int(token not in special) for token in answer])
            ids, attention = pad_batch(rows, pad)
            counted, _ = pad_batch(masks, 0)
            yield TokenBatch(ids, attention, counted.bool() & attention.bool())
            advance(len(chunk))

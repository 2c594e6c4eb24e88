"""Tiny word vocabularies, tokenizers, topic corpora and randomly initialised decoder models.

Everything is built from configs in a fraction of a second (no hub, no download).
The vocabulary holds forget words (biology), retain words (history, geography)
and common words, so a corpus of one topic is :func:`corpus` over its words.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

if TYPE_CHECKING:
    from transformers import Gemma2ForCausalLM, Qwen2ForCausalLM

FORGET_WORDS = [
    "cell",
    "virus",
    "gene",
    "protein",
    "enzyme",
    "bacteria",
    "dna",
    "rna",
    "mitochondria",
    "membrane",
]
RETAIN_WORDS = ["river", "mountain", "castle", "king", "poem", "novel", "city", "ocean", "trade", "empire"]
COMMON_WORDS = ["the", "a", "of", "and", "is", "in", "to", "what", "which", "are", "about"]
SPECIALS = ["<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>"]
VOCAB = SPECIALS + ["user", "assistant", "system"] + FORGET_WORDS + RETAIN_WORDS + COMMON_WORDS + ["<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
PROMPT_WORDS = [
    "A",
    "B",
    "C",
    "D",
    ".",
    ":",
    "(",
    ")",
    "Answer",
    "The",
    "following",
    "are",
    "multiple",
    "choice",
    "questions",
    "with",
    "answers",
    "biology",
    "history",
]
EVAL_VOCAB = SPECIALS + ["user", "assistant", "system"] + FORGET_WORDS + RETAIN_WORDS + COMMON_WORDS
EVAL_VOCAB = EVAL_VOCAB + PROMPT_WORDS + ["<unk>"]


# -- tokenizers --------------------------------------------------------------------------------------
def word_level(vocab: Sequence[str], pre_tokenizer: Any = None) -> Tokenizer:
    """A word-level backend: token id = position in ``vocab``; unknown words map to ``<unk>``.

    ``pre_tokenizer`` defaults to ``WhitespaceSplit`` (words are split on white space only).
    """
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizer if pre_tokenizer is not None else pre_tokenizers.WhitespaceSplit()
    return backend


def fast_tokenizer(
    backend: Tokenizer, specials: Sequence[str] = (), chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    """``backend`` as a transformers tokenizer with ``<bos>``/``<eos>``/``<pad>``/``<unk>``.

    ``specials``: further special tokens (chat markers); ``chat_template``: a jinja template, or none.
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        **({"additional_special_tokens": list(specials)} if specials else {}),
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def make_tokenizer(
    chat: bool = True, vocab: list[str] = VOCAB, split_punctuation: bool = False
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``vocab`` with the ChatML-like :data:`CHAT_TEMPLATE` (``chat``).

    ``split_punctuation``: split "answer:" into "answer" and ":" (the eval vocabulary has both).
    """
    pre_tokenizer = pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    return fast_tokenizer(
        word_level(vocab, pre_tokenizer), ["<|im_start|>", "<|im_end|>"], CHAT_TEMPLATE if chat else None
    )


def eval_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    """:func:`make_tokenizer` over :data:`EVAL_VOCAB` (question prompts: letters, punctuation, "Answer")."""
    return make_tokenizer(chat=chat, vocab=EVAL_VOCAB, split_punctuation=True)


def text_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (no chat template) whose vocabulary is the words of ``texts``."""
    words = sorted({w for text in texts for w in text.split()})
    return fast_tokenizer(
        word_level(["<pad>", "<bos>", "<eos>", "<unk>", *words], pre_tokenizers.Whitespace())
    )


def corpus(words: list[str], documents: int, length: int, seed: int) -> list[str]:
    """``documents`` texts of ``length`` words drawn from ``words`` and :data:`COMMON_WORDS` (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    pool = words + COMMON_WORDS
    docs = []
    for _ in range(documents):
        idx = torch.randint(len(pool), (length,), generator=generator)
        docs.append(" ".join(pool[i] for i in idx))
    return docs


# -- models ------------------------------------------------------------------------------------------
def tiny_decoder(
    config_class: Callable[..., Any],
    model_class: Callable[[Any], torch.nn.Module],
    seed: int,
    vocab_size: int,
    *,
    hidden_size: int = 32,
    layers: int = 2,
    max_positions: int = 256,
    special_ids: tuple[int, int, int] = (0, 1, 2),
    **extra: Any,
) -> Any:
    """A random decoder of a Llama-shaped family (4 heads, 2 KV heads, MLP 2x wide) in eval mode.

    ``special_ids`` = (pad, bos, eos); ``extra`` goes to the family's config (e.g. ``head_dim``).
    """
    torch.manual_seed(seed)
    pad, bos, eos = special_ids
    config = config_class(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        **extra,
    )
    return model_class(config).eval()


def tiny_llama(
    seed: int = 0,
    vocab_size: int = len(VOCAB),
    *,
    hidden_size: int = 32,
    layers: int = 2,
    max_positions: int = 256,
    special_ids: tuple[int, int, int] = (0, 1, 2),
) -> LlamaForCausalLM:
    """A random Llama (d_model ``hidden_size``, ``layers`` blocks); ``special_ids`` = (pad, bos, eos)."""
    return tiny_decoder(
        LlamaConfig,
        LlamaForCausalLM,
        seed,
        vocab_size,
        hidden_size=hidden_size,
        layers=layers,
        max_positions=max_positions,
        special_ids=special_ids,
    )


def tiny_gpt2(
    seed: int = 0,
    vocab_size: int = len(VOCAB),
    *,
    max_positions: int = 256,
    special_ids: tuple[int, int, int] = (0, 1, 2),
) -> GPT2LMHeadModel:
    """A random GPT-2 (d_model 32, 2 blocks); ``special_ids`` = (pad, bos, eos)."""
    torch.manual_seed(seed)
    pad, bos, eos = special_ids
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=max_positions,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    return GPT2LMHeadModel(config).eval()


def tiny_qwen2(seed: int = 0, vocab_size: int = len(VOCAB)) -> Qwen2ForCausalLM:
    """A random Qwen2 (d_model 32, 2 blocks; biased q/k/v projections)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return tiny_decoder(Qwen2Config, Qwen2ForCausalLM, seed, vocab_size, tie_word_embeddings=False)


def tiny_gemma2(
    seed: int = 0,
    vocab_size: int = len(VOCAB),
    *,
    layers: int = 2,
    max_positions: int = 256,
    sliding_window: int = 16,
    special_ids: tuple[int, int, int] = (0, 1, 2),
) -> Gemma2ForCausalLM:
    """A random Gemma 2 (d_model 32, ``layers`` blocks: sliding-window and global attention, soft-capping)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return tiny_decoder(
        Gemma2Config,
        Gemma2ForCausalLM,
        seed,
        vocab_size,
        layers=layers,
        max_positions=max_positions,
        special_ids=special_ids,
        head_dim=8,
        sliding_window=sliding_window,
    )


TINY_MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "qwen2": tiny_qwen2, "gemma2": tiny_gemma2}
"""Builders of the four tiny architectures the gate is tested on, by family name."""


def eval_llama(seed: int = 0) -> LlamaForCausalLM:
    """:func:`tiny_llama` over :data:`EVAL_VOCAB` (pairs with :func:`eval_tokenizer`)."""
    return tiny_llama(seed=seed, vocab_size=len(EVAL_VOCAB))

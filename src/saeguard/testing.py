"""Tiny randomly initialised models, tokenizers, random SAEs and items for tests and the tiny bench.

Everything is built from configs in a fraction of a second (no hub, no
download), so the test suite runs on 2 CPU cores. One builder of each kind:
tests, ``saeguard bench --model tiny`` and the docs' examples all use these.
"""

from __future__ import annotations

import torch
from sae_lens import (
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from saeguard.config import FitConfig
from saeguard.core.guardrail import Guardrail
from saeguard.core.sae import SelectedLatents
from saeguard.eval.items import McqItem

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


def make_tokenizer(
    chat: bool = True, vocab: list[str] = VOCAB, split_punctuation: bool = False
) -> PreTrainedTokenizerFast:
    ids = {word: i for i, word in enumerate(vocab)}
    backend = Tokenizer(models.WordLevel(vocab=ids, unk_token="<unk>"))
    backend.pre_tokenizer = (
        pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


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
    torch.manual_seed(seed)
    pad, bos, eos = special_ids
    config = LlamaConfig(
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
    )
    return LlamaForCausalLM(config).eval()


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


def tiny_qwen2(seed: int = 0, vocab_size: int = len(VOCAB)) -> torch.nn.Module:
    """A random Qwen2 (d_model 32, 2 blocks; biased q/k/v projections)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config).eval()


def tiny_gemma2(seed: int = 0, vocab_size: int = len(VOCAB)) -> torch.nn.Module:
    """A random Gemma 2 (d_model 32, 2 blocks: sliding-window and global attention, soft-capping)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    config = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        sliding_window=16,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return Gemma2ForCausalLM(config).eval()


TINY_MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "qwen2": tiny_qwen2, "gemma2": tiny_gemma2}
"""Builders of the four tiny architectures the gate is tested on, by family name."""


def random_sae(architecture: str, d_in: int = 32, d_sae: int = 64, seed: int = 0):
    """A random SAE whose latents fire on a fair share of tokens."""
    generator = torch.Generator().manual_seed(seed)
    if architecture == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    elif architecture == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    elif architecture == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=8))
    else:
        raise ValueError(architecture)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=generator) * 4.0)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=generator) / d_in**0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=generator) * 0.1 - 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=generator) * 0.05)
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae, generator=generator) * 0.2)
    return sae


def corpus(words: list[str], documents: int, length: int, seed: int) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    pool = words + COMMON_WORDS
    docs = []
    for _ in range(documents):
        idx = torch.randint(len(pool), (length,), generator=generator)
        docs.append(" ".join(pool[i] for i in idx))
    return docs


PLANTED_LATENT = 37


def plant_forget_direction(model, sae, latent: int = PLANTED_LATENT, strength: float = 3.0, seed: int = 5):
    """Give forget words a private embedding direction u and make ``latent`` read it.

    Other latents are made blind to u, so the planted latent fires on forget
    tokens only and dominates TopK selection there.
    """
    generator = torch.Generator().manual_seed(seed)
    width = sae.W_enc.shape[0]
    u = torch.randn(width, generator=generator)
    u /= u.norm()
    tokenizer = make_tokenizer()
    forget_ids = tokenizer.convert_tokens_to_ids(FORGET_WORDS)
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings -= (embeddings @ u).unsqueeze(1) * u
        embeddings[forget_ids] += strength * u
        sae.W_enc -= u.unsqueeze(1) * (u @ sae.W_enc).unsqueeze(0)
        sae.W_enc[:, latent] = 10.0 * u
        sae.b_enc[latent] = -10.0
        if hasattr(sae, "threshold"):
            sae.threshold[latent] = 0.0
    return model, sae


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


def eval_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    return make_tokenizer(chat=chat, vocab=EVAL_VOCAB, split_punctuation=True)


def eval_llama(seed: int = 0) -> LlamaForCausalLM:
    return tiny_llama(seed=seed, vocab_size=len(EVAL_VOCAB))


def make_items(n: int = 6, seed: int = 0) -> list[McqItem]:
    """Questions made of forget or retain words, options of 1-3 words."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for index in range(n):
        pool = FORGET_WORDS if index % 2 == 0 else RETAIN_WORDS
        words = [pool[int(i)] for i in torch.randint(len(pool), (5,), generator=generator)]
        choices = tuple(
            " ".join(pool[int(i)] for i in torch.randint(len(pool), (1 + k % 3,), generator=generator))
            for k in range(4)
        )
        subject = "biology" if index % 2 == 0 else "history"
        items.append(McqItem(f"what is the {' '.join(words)}", choices, index % 4, subject, f"q{index}"))
    return items


def make_guard(
    model,
    tokenizer,
    *,
    layer: int = 0,
    ids=(0, 1, 2, 3),
    tau: float = 0.5,
    clamp_value: float = 50.0,
    seed: int = 0,
) -> Guardrail:
    """A guardrail built directly (no fit) from a random standard SAE."""
    generator = torch.Generator().manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=16))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(32, 16, generator=generator) * 4.0)
        sae.W_dec.copy_(torch.randn(16, 32, generator=generator) / 32**0.5)
        sae.b_enc.copy_(torch.randn(16, generator=generator) * 0.1 - 0.1)
        sae.b_dec.zero_()
    return Guardrail(
        latents=SelectedLatents.from_sae(sae, list(ids)),
        layer=layer,
        tau=tau,
        clamp_value=clamp_value,
        config=FitConfig(),
        special_ids=sorted(tokenizer.all_special_ids),
    )


def text_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (no chat template) whose vocabulary is the words of ``texts``."""
    words = sorted({w for text in texts for w in text.split()})
    vocab = {token: i for i, token in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


# -- chat templates of the common families (tests of hf/chat.py and the gate) ----------------------
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
#: Llama-3 style: BOS, header tokens, trimmed content.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
#: Gemma-2 style: trims the content, refuses a system turn, roles must alternate.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
#: Zephyr style: role tokens, EOS closes every turn.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
#: Llama-2 style: the system prompt goes inside the first user turn; no role tokens.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
#: Gemma-3 style: the system prompt is folded into the first user turn, content trimmed.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
CHAT_TEMPLATES = {
    "test": CHAT_TEMPLATE,
    "chatml": CHATML_TEMPLATE,
    "llama3": LLAMA3_TEMPLATE,
    "gemma": GEMMA_TEMPLATE,
    "zephyr": ZEPHYR_TEMPLATE,
    "llama2": LLAMA2_TEMPLATE,
    "gemma3": GEMMA3_TEMPLATE,
}
CHAT_MARKERS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
]
CHAT_WORDS = ["user", "assistant", "system", "model", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]


def chat_tokenizer(template: str, kind: str = "word") -> PreTrainedTokenizerFast:
    """A tokenizer with every :data:`CHAT_MARKERS` token (special) and ``template`` as its chat template.

    ``kind``: ``"word"`` (word level, whitespace split), ``"bytelevel"`` (GPT-2 style byte-level
    BPE) or ``"metaspace"`` (SentencePiece-style BPE with no pre-splitting, so merges cross
    the template/content boundary as in Gemma's tokenizer). The BPE kinds are trained in code
    on the test words and template text (deterministic, a few ms).
    """
    from tokenizers import decoders, trainers

    specials = ["<pad>", "<bos>", "<eos>", "<unk>", *CHAT_MARKERS]
    words = CHAT_WORDS + FORGET_WORDS + RETAIN_WORDS + COMMON_WORDS
    if kind == "word":
        backend = Tokenizer(
            models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>")
        )
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    elif kind in ("bytelevel", "metaspace"):
        backend = Tokenizer(models.BPE(unk_token="<unk>" if kind == "metaspace" else None))
        if kind == "bytelevel":
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
            alphabet = pre_tokenizers.ByteLevel.alphabet()
        else:
            backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never", split=False)
            backend.decoder = decoders.Metaspace(prepend_scheme="never", split=False)
            alphabet = list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n.,:?!<>|[]/_-0123456789")
        lines = [" ".join(words), "\n".join(words), *corpus(FORGET_WORDS + RETAIN_WORDS, 40, 12, seed=3)]
        lines += [f"{role}\n{text}\n" for role in CHAT_WORDS for text in corpus(RETAIN_WORDS, 3, 6, seed=4)]
        trainer = trainers.BpeTrainer(
            vocab_size=600, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
        )
        backend.train_from_iterator(lines, trainer=trainer)
    else:
        raise ValueError(kind)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=CHAT_MARKERS,
    )
    tokenizer.chat_template = template
    return tokenizer

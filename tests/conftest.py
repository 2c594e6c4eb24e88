"""Tiny randomly initialised models, a word-level tokenizer and random SAEs.

Everything here is built from configs in a fraction of a second, so the core
suite runs on 2 CPU cores with no hub.
"""

from __future__ import annotations

import pytest
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


def tiny_llama(seed: int = 0, vocab_size: int = len(VOCAB)) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
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
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(VOCAB),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


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


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run far slower with 2 intra-op threads when the CPUs are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(params=["llama", "gpt2"])
def model(request):
    return tiny_llama() if request.param == "llama" else tiny_gpt2()


@pytest.fixture
def forget_corpus() -> list[str]:
    return corpus(FORGET_WORDS, 24, 40, seed=1)


@pytest.fixture
def retain_corpus() -> list[str]:
    return corpus(RETAIN_WORDS, 24, 40, seed=2)


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


@pytest.fixture(params=["standard", "jumprelu", "topk"])
def architecture(request) -> str:
    return request.param

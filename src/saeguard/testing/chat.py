"""Chat templates of the common model families and tokenizers that carry them (tests of ``hf/chat.py``).

Each template is the family's own jinja logic, shortened (ChatML, Llama-2/3, Gemma-2/3,
Zephyr); :func:`chat_tokenizer` pairs one with a word-level or a trained BPE tokenizer
whose merges may cross the template/content boundary, as real tokenizers' do.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from saeguard.testing.models import (
    CHAT_TEMPLATE,
    COMMON_WORDS,
    FORGET_WORDS,
    RETAIN_WORDS,
    corpus,
    fast_tokenizer,
    word_level,
)

#: ChatML (Qwen, SmolLM): role line, content, ``<|im_end|>``.
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

    Raises:
        ValueError: an unknown ``kind`` (a programming error in a test).
    """
    from tokenizers import decoders, trainers

    specials = ["<pad>", "<bos>", "<eos>", "<unk>", *CHAT_MARKERS]
    words = CHAT_WORDS + FORGET_WORDS + RETAIN_WORDS + COMMON_WORDS
    if kind == "word":
        backend = word_level(specials + words)
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
    return fast_tokenizer(backend, CHAT_MARKERS, template)

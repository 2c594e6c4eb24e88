"""hf/chat.py: which tokens are the user's, across all turns, for any chat template (issue 11 §2, 13 §2)."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from saeguard.errors import SaeguardError
from saeguard.hf.chat import encode_chat, learn_turn_markers, user_token_mask
from saeguard.hf.prompts import encode_prompt, encode_prompts, encode_with_span
from saeguard.testing import (
    CHAT_TEMPLATES,
    COMMON_WORDS,
    FORGET_WORDS,
    RETAIN_WORDS,
    ZEPHYR_TEMPLATE,
    chat_tokenizer,
    make_tokenizer,
)

KINDS = ["word", "bytelevel", "metaspace"]
SYSTEM_REFUSED = {"gemma"}
SYSTEM_FOLDED = {"gemma3"}  # the template puts the system prompt inside the first user turn


@cache
def _tokenizer(template: str, kind: str):
    return chat_tokenizer(CHAT_TEMPLATES[template], kind)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


# each test compares the words of every turn with the tokens the mask marks
CONVERSATIONS = {
    "one turn": [user("what is the cell")],
    "trailing newline": [user("what is the cell and the king of a river\n")],
    "three turns": [
        user("what is the cell"),
        assistant("a river of the city"),
        user(" and the virus is "),
        assistant("the king"),
        user("which gene\n\nand which protein ?"),
    ],
    "system first": [system("the king of the city"), user("the enzyme and the dna"), assistant("a poem")],
    "template text typed": [user("what <|im_start|> user is <end_of_turn> the [INST] cell <|eot_id|> dna")],
    "empty turn": [user(""), assistant("the river"), user("the rna")],
}


def _cases():
    for template in CHAT_TEMPLATES:
        for kind in KINDS:
            for name, messages in CONVERSATIONS.items():
                if template in SYSTEM_REFUSED and messages[0]["role"] == "system":
                    continue
                yield pytest.param(template, kind, messages, id=f"{template}-{kind}-{name}")


def _words(text: str) -> list[str]:
    """The vocabulary words of ``text`` (markup and punctuation dropped)."""
    return [w for w in text.replace("?", " ").split() if w in FORGET_WORDS + RETAIN_WORDS + COMMON_WORDS]


def _masked_words(tokenizer, ids: list[int], mask: list[bool], keep: bool = True) -> list[str]:
    """The words of the runs of non-special ids whose mask is ``keep``, each run decoded on its own."""
    special, runs, run = set(tokenizer.all_special_ids), [], []
    for i, m in zip([*ids, None], [*mask, not keep], strict=True):
        if m == keep and i not in special:
            run.append(i)
        elif run:
            runs, run = [*runs, tokenizer.decode(run)], []
    return _words(" ".join(runs))


@pytest.mark.parametrize(("template", "kind", "messages"), list(_cases()))
def test_the_mask_marks_every_user_turn_and_no_other_turn(template, kind, messages):
    tokenizer = _tokenizer(template, kind)
    ids, mask = encode_chat(tokenizer, messages)
    assert _masked_words(tokenizer, ids, mask) == [
        w for m in messages if m["role"] == "user" for w in _words(m["content"])
    ]
    others = [w for m in messages if m["role"] != "user" for w in _words(m["content"])]
    assert _masked_words(tokenizer, ids, mask, keep=False) == others
    assert ids == tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]


@pytest.mark.parametrize(("template", "kind", "messages"), list(_cases()))
@pytest.mark.parametrize("generation", [True, False])
def test_user_token_mask_of_raw_chat_ids_equals_the_encode_chat_mask(template, kind, messages, generation):
    tokenizer = _tokenizer(template, kind)
    raw = tokenizer.apply_chat_template(messages, add_generation_prompt=generation)["input_ids"]
    ids, mask = encode_chat(tokenizer, messages, add_generation_prompt=generation)
    assert raw == ids
    if template in SYSTEM_FOLDED and messages[0]["role"] == "system":
        pytest.skip("raw ids cannot tell a folded system prompt from the user's text: see the next test")
    assert user_token_mask(tokenizer, raw) == mask
    assert user_token_mask(tokenizer, torch.tensor(raw)) == mask


@pytest.mark.parametrize("kind", KINDS)
def test_raw_ids_count_a_system_prompt_the_template_folds_into_the_user_turn(kind):
    tokenizer = _tokenizer("gemma3", kind)
    messages = CONVERSATIONS["system first"]
    ids, mask = encode_chat(tokenizer, messages)
    assert _masked_words(tokenizer, ids, mask) == ["the", "enzyme", "and", "the", "dna"]
    raw = user_token_mask(tokenizer, ids)
    assert _masked_words(tokenizer, ids, raw) == _words("the king of the city the enzyme and the dna")


@pytest.mark.parametrize("kind", KINDS)
def test_a_trimming_template_counts_a_message_with_a_trailing_newline_like_one_without(kind):
    """issue 11 §2: both render to the same ids; the old span search counted 16 vs 10 tokens."""
    tokenizer = _tokenizer("gemma", kind)
    plain, newline = "what is the cell and the king of a river", "what is the cell and the king of a river\n"
    assert encode_prompt(tokenizer, newline) == encode_prompt(tokenizer, plain)
    ids, mask = encode_prompt(tokenizer, newline)
    assert _masked_words(tokenizer, ids, mask) == plain.split()
    assert sum(mask) < len(ids) - 4  # <bos> <start_of_turn> user ... <end_of_turn> <start_of_turn> model
    if kind == "word":
        assert sum(mask) == 10
    batch = encode_prompts(tokenizer, [plain, newline])
    assert batch.content_mask.sum(dim=1).tolist() == [sum(mask), sum(mask)]


def test_a_template_that_refuses_a_system_turn_gives_one_line_with_the_fix():
    tokenizer = _tokenizer("gemma", "word")
    with pytest.raises(SaeguardError) as error:
        encode_chat(tokenizer, [system("the king"), user("what is the cell")])
    message = str(error.value)
    assert "System role not supported" in message and "system_into_user=True" in message
    assert "\n" not in message
    with pytest.raises(SaeguardError, match="system_into_user=True"):
        encode_prompt(tokenizer, "what is the cell", system="the king")


@pytest.mark.parametrize("kind", KINDS)
def test_system_into_user_merges_the_system_prompt_without_counting_it(kind):
    tokenizer = _tokenizer("gemma", kind)
    messages = [
        system("the king of the city"),
        user("what is the cell"),
        assistant("a river"),
        user("the dna"),
    ]
    ids, mask = encode_chat(tokenizer, messages, system_into_user=True)
    assert "king" in tokenizer.decode(ids)
    assert _masked_words(tokenizer, ids, mask) == ["what", "is", "the", "cell", "the", "dna"]
    merged = [user("the king of the city\n\nwhat is the cell"), assistant("a river"), user("the dna")]
    assert ids == tokenizer.apply_chat_template(merged, add_generation_prompt=True)["input_ids"]
    # raw ids cannot tell a merged system prompt from the user's text: it counts there (documented)
    raw = user_token_mask(tokenizer, ids)
    assert all(r for r, m in zip(raw, mask, strict=True) if m)
    assert _masked_words(tokenizer, ids, raw)[:4] == ["the", "king", "of", "the"]
    one = encode_prompt(tokenizer, "what is the cell", system="the king", system_into_user=True)[0]
    merged_one = [user("the king\n\nwhat is the cell")]
    assert one == tokenizer.apply_chat_template(merged_one, add_generation_prompt=True)["input_ids"]


def test_roles_that_do_not_alternate_get_one_line_with_the_fix():
    tokenizer = _tokenizer("gemma", "word")
    with pytest.raises(SaeguardError, match=r"must alternate.*alternate user and assistant turns"):
        encode_chat(tokenizer, [user("the cell"), user("the dna")])


def test_a_system_turn_with_nothing_to_merge_into_is_refused():
    with pytest.raises(SaeguardError, match="followed by a user turn"):
        encode_chat(
            _tokenizer("gemma", "word"), [user("a"), assistant("b"), system("c")], system_into_user=True
        )


@pytest.mark.parametrize("template", ["chatml", "llama3", "gemma", "zephyr"])
def test_text_the_user_types_that_looks_like_template_markup_is_still_the_users(template):
    tokenizer = _tokenizer(template, "bytelevel")
    content = "what <|im_start|>user\nis <start_of_turn>user\n the <|im_end|> cell <|user|> dna"
    ids, mask = encode_chat(tokenizer, [user(content)])
    typed = set(
        tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<start_of_turn>", "<|user|>"])
    )
    typed_and_counted = [i for i, m in zip(ids, mask, strict=True) if m and i in typed]
    assert len(typed_and_counted) == 4
    assert user_token_mask(tokenizer, ids) == mask


def test_plain_ids_count_every_non_special_token():
    tokenizer = _tokenizer("chatml", "bytelevel")
    ids = [tokenizer.bos_token_id, *tokenizer("what is the cell")["input_ids"], tokenizer.eos_token_id]
    assert user_token_mask(tokenizer, ids) == [False] + [True] * (len(ids) - 2) + [False]
    no_template = make_tokenizer(chat=False)
    ids = no_template("what is the cell")["input_ids"]
    assert user_token_mask(no_template, ids) == [True] * 4
    assert encode_prompt(no_template, "what is the cell") == (ids, [True] * 4)
    assert user_token_mask(no_template, []) == []


def test_left_padding_is_not_the_users():
    tokenizer = _tokenizer("chatml", "word")
    ids, mask = encode_chat(tokenizer, [user("what is the cell")])
    pad = tokenizer.pad_token_id
    assert user_token_mask(tokenizer, [pad, pad, *ids]) == [False, False, *mask]
    batch = encode_prompts(tokenizer, ["what is the cell", "the dna"])
    assert batch.content_mask[0].tolist() == user_token_mask(tokenizer, batch.input_ids[0])


def test_encode_prompts_takes_strings_and_conversations_in_one_batch():
    tokenizer = _tokenizer("llama3", "word")
    chat = [user("what is the cell"), assistant("a river"), user("the dna")]
    batch = encode_prompts(tokenizer, ["the virus", chat], system="the king")
    ids, mask = encode_chat(tokenizer, [system("the king"), *chat])
    width = batch.prompt_length
    assert batch.input_ids[1].tolist() == [tokenizer.pad_token_id] * (width - len(ids)) + ids
    assert batch.content_mask[1].tolist() == [False] * (width - len(ids)) + mask
    assert int(batch.content_mask[0].sum()) == 2
    right = encode_prompts(tokenizer, ["the virus", chat], left_pad=False)
    ids, mask = encode_chat(tokenizer, chat)
    assert right.input_ids[1, : len(ids)].tolist() == ids
    assert right.content_mask[1].tolist() == mask + [False] * (right.prompt_length - len(ids))


@pytest.mark.parametrize(
    ("rows", "kwargs", "problem"),
    [
        ([], {}, "no prompts"),
        ("what is the cell", {}, "no prompts"),
        ([3], {}, "must be a string or a conversation"),
        ([[user("the cell")]], {"chat": False}, "needs a chat template"),
        ([[assistant("the cell")]], {}, "no user turn"),
        ([[{"role": "user"}]], {}, "string 'content'"),
        ([[{"role": "user", "content": [{"type": "text", "text": "x"}]}]], {}, "join multi-part"),
    ],
)
def test_bad_prompts_get_one_line_naming_the_problem(rows, kwargs, problem):
    with pytest.raises(SaeguardError, match=problem):
        encode_prompts(_tokenizer("chatml", "word"), rows, **kwargs)


def test_a_faithful_template_keeps_the_old_spans():
    tokenizer = make_tokenizer()
    text = "what is the cell and the king"
    rendered = tokenizer.apply_chat_template([user(text)], tokenize=False, add_generation_prompt=True)
    start = rendered.rfind(text)
    assert encode_prompt(tokenizer, text) == encode_with_span(tokenizer, rendered, (start, start + len(text)))


def test_a_template_that_rewrites_the_message_is_refused_not_counted_whole():
    tokenizer = chat_tokenizer(
        "{% for m in messages %}<|im_start|>{{ m['content'] | upper }}<|im_end|>{% endfor %}"
    )
    with pytest.raises(SaeguardError, match="does not write the user's message as given"):
        encode_chat(tokenizer, [user("the cell")])
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['content'] | replace('cell', 'dna') }}<|im_end|>{% endfor %}"
    )
    with pytest.raises(SaeguardError, match="rewrites a user message beyond whitespace"):
        encode_chat(tokenizer, [user("the cell")])


def test_a_template_without_role_markers_encodes_but_raw_ids_say_so():
    tokenizer = chat_tokenizer("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    ids, mask = encode_chat(tokenizer, [user("the cell"), assistant("a river"), user("the dna")])
    assert _masked_words(tokenizer, ids, mask) == ["the", "cell", "the", "dna"]
    with pytest.raises(SaeguardError, match="does not mark where a user turn starts"):
        user_token_mask(tokenizer, ids)


def test_no_chat_template_is_one_line():
    with pytest.raises(SaeguardError, match="chat template .* is missing"):
        encode_chat(make_tokenizer(chat=False), [user("the cell")])


def test_learned_markers_follow_a_changed_chat_template():
    tokenizer = chat_tokenizer(CHAT_TEMPLATES["chatml"], "word")
    chatml = learn_turn_markers(tokenizer)
    assert chatml.openers[0].pieces == ("<|im_start|>", "user")
    assert chatml.closer.pieces[0] == "<|im_end|>"
    tokenizer.chat_template = ZEPHYR_TEMPLATE
    ids, mask = encode_chat(tokenizer, [user("the cell"), assistant("a river"), user("the dna")])
    assert learn_turn_markers(tokenizer).openers[0].pieces == ("<|user|>",)
    assert user_token_mask(tokenizer, ids) == mask


def test_user_token_mask_takes_one_row_of_ints():
    tokenizer = _tokenizer("chatml", "word")
    with pytest.raises(SaeguardError, match="once per row"):
        user_token_mask(tokenizer, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(SaeguardError, match="once per row"):
        user_token_mask(tokenizer, ["a", "b"])


def test_the_llama2_system_prompt_inside_the_first_user_turn_is_not_the_users():
    tokenizer = _tokenizer("llama2", "word")
    messages = [
        system("the king of the city"),
        user("what is the cell"),
        assistant("a river"),
        user("the dna"),
    ]
    ids, mask = encode_chat(tokenizer, messages)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:3] == ["<bos>", "[INST]", "<<SYS>>"]
    assert [t for t, m in zip(tokens, mask, strict=True) if m] == ["what", "is", "the", "cell", "the", "dna"]
    assert user_token_mask(tokenizer, ids) == mask


@cache
def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from saeguard.hf.models import default_model_dir

    folder = default_model_dir()
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("the SmolLM2 copy is not cached (run `saeguard demo` once)")
    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize(
    "name", ["one turn", "trailing newline", "three turns", "system first", "template text typed"]
)
def test_the_default_models_tokenizer_marks_user_turns_only(name):
    tokenizer = _smollm2_tokenizer()
    messages = CONVERSATIONS[name]
    raw = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    ids, mask = encode_chat(tokenizer, messages)
    assert ids == raw
    assert user_token_mask(tokenizer, raw) == mask
    assert _masked_words(tokenizer, ids, mask) == [
        w for m in messages if m["role"] == "user" for w in _words(m["content"])
    ]
    if name == "one turn":  # the default system prompt SmolLM2's template adds is not the user's
        assert "helpful AI assistant" in tokenizer.decode(ids)
        assert tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "what is the cell"

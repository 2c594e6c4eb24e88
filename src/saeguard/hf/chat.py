"""Which tokens of a chat are the user's, for any chat template (issue 11 §2, issue 13 §2).

The gate counts the user's own tokens only (docs/method.md §8, "which tokens count"): a system
prompt and template tokens dilute rho, and some selected latents fire on template tokens.

* :func:`encode_chat` renders a conversation and marks every token of every user turn. It renders
  the conversation once more with each user content replaced by a sentinel: the text around the
  sentinels is the template's own. The real rendering must then read as those pieces with the
  contents between them, literally, or else up to whitespace (templates that ``| trim``), so a
  message that contains template-looking text is still the user's.
* :func:`user_token_mask` finds the same tokens in raw chat-formatted ids (what
  ``apply_chat_template`` hands ``model.generate``): the tokens around a user turn are learned
  from sentinel renderings (``<|im_start|>user\\n`` ... ``<|im_end|>``) and searched for in the ids.
  Ids with no turn marker are plain text: every non-special token counts.

One rule for both: a token is the user's when it overlaps a character of a user turn's content.
Nothing falls back silently: a template that hides or rewrites the user's text beyond whitespace,
or refuses the conversation, raises :class:`SaeguardError` with one line naming the fix.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from saeguard.errors import SaeguardError, require
from saeguard.hf.chat_ids import Run, TurnMarkers, markers_from_runs, scan_user_turns
from saeguard.io import check_unicode

Message = Mapping[str, str]
_USER, _ASSISTANT, _SYSTEM = "user", "assistant", "system"


def has_chat_template(tokenizer: Any) -> bool:
    """True when the tokenizer defines a chat template (instruction-tuned models do)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _template_name(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return f"the chat template of {name}"


def check_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Copies of ``messages`` after checking each is a ``{"role": str, "content": str}`` dict.

    Raises:
        SaeguardError: not a non-empty list of such dicts, a content that is not valid Unicode (an
            unpaired surrogate), or no user turn.
    """
    require(
        isinstance(messages, Sequence) and not isinstance(messages, (str, bytes)) and len(messages) > 0,
        "a conversation must be a non-empty list of {'role': ..., 'content': ...} messages",
    )
    for index, message in enumerate(messages):
        require(
            isinstance(message, Mapping)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str),
            f"message {index} of the conversation must be a dict with a string 'role' and a string "
            f"'content' (join multi-part contents into one string first): got {str(message)[:60]!r}",
        )
        check_unicode(message["content"], f"message {index} of the conversation")
    require(
        any(m["role"] == _USER for m in messages),
        "the conversation has no user turn: add a {'role': 'user', 'content': ...} message",
    )
    return [dict(m) for m in messages]


def render_messages(
    tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool = True
) -> str:
    """The conversation rendered by the tokenizer's chat template (text, not ids).

    Raises:
        SaeguardError: no chat template, or the template refuses the conversation (a system turn,
            roles that do not alternate, ...): one line with the template's complaint and the fix.
    """
    name = _template_name(tokenizer)
    require(
        has_chat_template(tokenizer),
        f"{name} is missing: encode plain text (chat=False) or set tokenizer.chat_template",
    )
    try:
        text = tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as error:  # noqa: BLE001 - a template is user code and may raise anything
        complaint = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise SaeguardError(
            f"{name} refuses this conversation ({complaint}): {_fix(tokenizer, messages)}"
        ) from None
    require(
        isinstance(text, str), f"{name} rendered {type(text).__name__}, not text: use a text chat template"
    )
    return text


def _fix(tokenizer: Any, messages: Sequence[Message]) -> str:
    """What to change in a conversation the template refused."""
    others = [m for m in messages if m["role"] != _SYSTEM]
    if len(others) < len(messages) and others:
        try:
            tokenizer.apply_chat_template(others, tokenize=False)
            return "merge the system prompt into the first user turn (pass system_into_user=True)"
        except Exception:  # noqa: BLE001 - the template refuses more than the system turn
            pass
    roles = [m["role"] for m in others]
    if any(r == s for r, s in zip(roles, roles[1:], strict=False)) or roles[:1] != [_USER]:
        return "start with a user turn and alternate user and assistant turns (join consecutive messages)"
    return "give the conversation the roles and order this template accepts"


def merge_system_into_user(messages: Sequence[Message]) -> tuple[list[dict[str, str]], dict[int, int]]:
    """System turns joined into the start of the next user turn, for templates that refuse them.

    Returns the merged messages and, per merged user turn (index in the result), the length in
    characters of the system text put before the user's own content (not the user's tokens).
    """
    merged: list[dict[str, str]] = []
    prefix_len: dict[int, int] = {}
    pending: list[str] = []
    for message in check_messages(messages):
        if message["role"] == _SYSTEM:
            pending.append(message["content"])
            continue
        if message["role"] == _USER and pending:
            prefix = "\n\n".join(pending) + "\n\n"
            message = {**message, "content": prefix + message["content"]}
            prefix_len[len(merged)] = len(prefix)
            pending = []
        merged.append(message)
    require(
        not pending, "a system turn must be followed by a user turn to merge into (system_into_user=True)"
    )
    return merged, prefix_len


# -- encode_chat: sentinel rendering, then the real rendering walked piece by piece ---------------
def _sentinel_tag(texts: Iterable[str]) -> str:
    """Letters that occur in none of ``texts`` (so a sentinel can never be mistaken for content)."""
    tag, texts = "zqx", list(texts)
    while any(tag in text for text in texts):
        tag += "q"
    return tag


def _sentinel(tag: str, index: int) -> str:
    return f"{tag}{index}{tag}"


def _slots(text: str, tag: str) -> list[tuple[int, int, int]]:
    """(message index, start, end) of every sentinel in ``text``, in order of position."""
    return [(int(m.group(1)), m.start(), m.end()) for m in re.finditer(f"{tag}(\\d+){tag}", text)]


def _flexible(text: str) -> str:
    """``text`` as a pattern in which every whitespace run matches any whitespace."""
    return "".join(
        r"\s*" if chunk.isspace() else re.escape(chunk) for chunk in re.split(r"(\s+)", text) if chunk
    )


def _pattern(pieces: list[str], contents: list[str], *, flexible: bool) -> re.Pattern[str]:
    """The template's pieces with one group per user content between them.

    Literal, or ``flexible`` for templates that trim or reflow whitespace: every whitespace run
    matches any whitespace, and the whitespace at the edge of a piece is the template's where
    present, the content's otherwise (as :func:`user_token_mask` splits it).
    """
    if not flexible:
        groups = [f"({re.escape(content)})" for content in contents] + [""]
        return re.compile(
            "".join(re.escape(piece) + group for piece, group in zip(pieces, groups, strict=True))
        )
    parts = []
    for k, piece in enumerate(pieces):
        body = piece.strip()
        lead, trail = piece[: len(piece) - len(piece.lstrip())], piece[len(piece.rstrip()) :] if body else ""
        parts.append(f"(?:{re.escape(lead)})?\\s*{_flexible(body)}(?:{re.escape(trail)})?")
        if k < len(contents):
            body = contents[k].strip()  # an empty content leaves the whitespace to the template
            parts.append(f"(\\s*{_flexible(body)}\\s*?)" if body else "(\\s*?)")
    return re.compile("".join(parts) + r"\s*")


def chat_spans(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    system_into_user: bool = False,
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans ``[start, end)`` of every user turn's content.

    ``system_into_user=True`` first merges system turns into the next user turn
    (:func:`merge_system_into_user`); the system text is still not counted as the user's.

    Raises:
        SaeguardError: bad messages, no template, a refused conversation, or a template that hides
            or rewrites a user message beyond whitespace.
    """
    messages = check_messages(messages)
    prefix_len: dict[int, int] = {}
    if system_into_user:
        messages, prefix_len = merge_system_into_user(messages)
    own = {i: m["content"][prefix_len.get(i, 0) :] for i, m in enumerate(messages) if m["role"] == _USER}
    tag = _sentinel_tag(m["content"] for m in messages)
    marked = [
        {**m, "content": m["content"][: prefix_len.get(i, 0)] + _sentinel(tag, i)} if i in own else m
        for i, m in enumerate(messages)
    ]
    skeleton = render_messages(tokenizer, marked, add_generation_prompt=add_generation_prompt)
    text = render_messages(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    slots = _slots(skeleton, tag)
    name = _template_name(tokenizer)
    require(
        bool(slots),
        f"{name} does not write the user's message as given, so its tokens cannot be found: "
        "use a template that writes message contents verbatim, or encode plain text (chat=False)",
    )
    cuts = [0] + [edge for _, start, end in slots for edge in (start, end)] + [len(skeleton)]
    pieces = [skeleton[cuts[k] : cuts[k + 1]] for k in range(0, len(cuts), 2)]
    contents = [own[index] for index, _, _ in slots]
    for flexible in (False, True):
        match = _pattern(pieces, contents, flexible=flexible).fullmatch(text)
        if match:
            return text, [match.span(k + 1) for k in range(len(slots))]
    raise SaeguardError(
        f"{name} rewrites a user message beyond whitespace, so its tokens cannot be found: "
        "send the text as the template writes it, or encode plain text (chat=False)"
    )


def _offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of ``text`` as ``apply_chat_template`` tokenizes it (no special tokens added) and their offsets."""
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise SaeguardError(
            "finding the user's tokens needs a fast tokenizer (character offsets): load it with use_fast=True"
        ) from None
    return [int(i) for i in encoded["input_ids"]], [(int(a), int(b)) for a, b in encoded["offset_mapping"]]


def encode_text_spans(
    tokenizer: Any, text: str, spans: Sequence[tuple[int, int]]
) -> tuple[list[int], list[bool]]:
    """Token ids of ``text`` (no special tokens added) and, per token, whether it overlaps a character span.

    Raises:
        SaeguardError: a slow tokenizer (no character offsets).
    """
    ids, offsets = _offsets(tokenizer, text)
    return ids, [any(a < end and b > start for start, end in spans) for a, b in offsets]


def encode_chat(
    tokenizer: Any,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    system_into_user: bool = False,
) -> tuple[list[int], list[bool]]:
    """Ids of a whole conversation and, per token, whether it belongs to a user turn's content.

    ``messages``: system/user/assistant turns, ``{"role": str, "content": str}`` each. The ids are
    those of ``tokenizer.apply_chat_template(messages, add_generation_prompt=...)``; the mask (same
    length) is True on every token overlapping a user turn's content, False on the template, the
    system prompt and assistant turns. ``system_into_user=True`` merges system turns into the next
    user turn first, for templates that refuse a system turn (Gemma-2's).

    Raises:
        SaeguardError: see :func:`chat_spans` and :func:`encode_text_spans`.
    """
    text, spans = chat_spans(
        tokenizer, messages, add_generation_prompt=add_generation_prompt, system_into_user=system_into_user
    )
    return encode_text_spans(tokenizer, text, spans)


# -- user_token_mask: learn the markers around a user turn, then scan raw ids ----------------------
_LAYOUTS = (
    ((_USER, _ASSISTANT, _USER, _ASSISTANT, _USER), False),
    ((_USER, _ASSISTANT, _USER), True),
    ((_SYSTEM, _USER, _ASSISTANT, _USER), True),
)
_MARKERS: weakref.WeakKeyDictionary[Any, tuple[str, TurnMarkers]] = weakref.WeakKeyDictionary()


def _token_texts(tokenizer: Any, ids: Sequence[int]) -> tuple[str, ...]:
    return tuple(str(t or "") for t in tokenizer.convert_ids_to_tokens(list(ids)))


def _layout_runs(tokenizer: Any, roles: tuple[str, ...], generation: bool) -> tuple[list[Run], ...]:
    """Id runs before user contents, before other contents, after user contents (mid-chat / at the end)."""
    messages = [{"role": role, "content": _sentinel("zqx", i)} for i, role in enumerate(roles)]
    text = render_messages(tokenizer, messages, add_generation_prompt=generation)
    ids, offsets = _offsets(tokenizer, text)
    contents = []  # (role, first token, end token) of each sentinel
    for index, start, end in _slots(text, "zqx"):
        tokens = [t for t, (a, b) in enumerate(offsets) if a < end and b > start]
        contents += [(roles[index], tokens[0], tokens[-1] + 1)] if tokens else []
    user_pres: list[Run] = []
    other_pres: list[Run] = []
    posts: list[Run] = []
    end_posts: list[Run] = []
    for k, (role, first, stop) in enumerate(contents):
        (user_pres if role == _USER else other_pres).append(
            tuple(ids[contents[k - 1][2] if k else 0 : first])
        )
        if role == _USER:
            after = contents[k + 1][1] if k + 1 < len(contents) else len(ids)
            (end_posts if after == len(ids) and not generation else posts).append(tuple(ids[stop:after]))
    return user_pres, other_pres, posts, end_posts


def learn_turn_markers(tokenizer: Any) -> TurnMarkers:
    """The token runs around a user turn's content, from renderings with sentinel contents.

    Three sentinel chats (user/assistant turns, with and without the generation prompt, and one
    with a system turn where the template accepts it) give the runs that
    :func:`~saeguard.hf.chat_ids.markers_from_runs` turns into markers. A template that folds the
    system prompt into the first user turn (Gemma 3) is learned from the chats without one (such a
    system prompt then counts in raw ids). Cached per tokenizer and template.

    Raises:
        SaeguardError: the template refuses every sentinel chat, or does not mark user turns.
    """
    template = str(tokenizer.chat_template)
    cached = _MARKERS.get(tokenizer)
    if cached is not None and cached[0] == template:
        return cached[1]
    layouts: dict[bool, list[tuple[list[Run], ...]]] = {False: [], True: []}  # by "has a system turn"
    refusals: list[SaeguardError] = []
    for roles, generation in _LAYOUTS:
        try:
            layouts[_SYSTEM in roles].append(_layout_runs(tokenizer, roles, generation))
        except SaeguardError as error:  # e.g. a template that refuses system turns
            refusals.append(error)
    if len(refusals) == len(_LAYOUTS):
        raise refusals[0]
    name = _template_name(tokenizer)

    def learn(runs: list[tuple[list[Run], ...]]) -> TurnMarkers:
        user, other, post, end = ([run for layout in runs for run in layout[part]] for part in range(4))
        return markers_from_runs(user, other, post, end, lambda run: _token_texts(tokenizer, run), name)

    try:
        markers = learn(layouts[False] + layouts[True])
    except SaeguardError:
        if not layouts[True] or not layouts[False]:
            raise
        markers = learn(layouts[False])
    with contextlib.suppress(TypeError):  # not weak-referenceable: learnt again next time
        _MARKERS[tokenizer] = (template, markers)
    return markers


def user_token_mask(tokenizer: Any, ids: Sequence[int]) -> list[bool]:
    """Per id of a raw (possibly chat-formatted) sequence, whether it is the user's own text.

    ``ids``: one sequence of token ids (a list, or a 1-D tensor), e.g. what
    ``apply_chat_template(..., add_generation_prompt=True)`` returns, possibly left-padded. With a
    chat template, the ids between a user-turn opener and its closer (:func:`learn_turn_markers`)
    count, in every turn; on ids :func:`encode_chat` produced this equals its mask. Ids with no
    turn marker (plain text), and all ids when the tokenizer has no chat template: every
    non-special token counts.

    Limits (ids alone cannot tell): a system prompt merged into a user turn (``system_into_user``)
    counts here, and text the user typed after a closer of their own does not when it reads as a
    new turn; :func:`encode_chat`, which knows the messages, gets both right.

    Raises:
        SaeguardError: ``ids`` not a flat sequence of ints, or a template that does not mark user
            turns (:func:`learn_turn_markers`).
    """
    flat = ids.tolist() if hasattr(ids, "tolist") else ids
    require(
        isinstance(flat, Sequence) and all(isinstance(i, int) and not isinstance(i, bool) for i in flat),
        "user_token_mask takes one sequence of token ids (a list of ints or a 1-D tensor): "
        "call it once per row of a batch",
    )
    flat, special = list(flat), set(tokenizer.all_special_ids)
    if flat and has_chat_template(tokenizer):
        markers = learn_turn_markers(tokenizer)
        mask = scan_user_turns(flat, _token_texts(tokenizer, flat), special, markers)
        if mask is not None:
            return mask
    return [i not in special for i in flat]

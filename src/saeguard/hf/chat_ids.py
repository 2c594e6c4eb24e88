"""User turns in raw chat-formatted ids: turn markers, and the scan that finds them (issue 13 §2).

Pure functions over token ids and token texts (``convert_ids_to_tokens``); the markers are learned
from a chat template by :func:`saeguard.hf.chat.learn_turn_markers`, which hands this module the
token runs found around sentinel contents. Markers are matched on the concatenated token texts, so
a token that the tokenizer merged across the template/content boundary still shows where the
template's text is (that token overlaps the content, so it counts, as in
:func:`saeguard.hf.chat.encode_chat`); a special token of a marker must be that very id.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from saeguard.errors import require

Run = tuple[int, ...]


@dataclass(frozen=True)
class Marker:
    """A run of template tokens: ids, and their token texts."""

    ids: Run
    pieces: tuple[str, ...]

    @property
    def text(self) -> str:
        """The token texts joined (byte-level ``Ġ``/``Ċ`` or ``▁`` spellings, as the vocabulary has them)."""
        return "".join(self.pieces)


@dataclass(frozen=True)
class TurnMarkers:
    """What surrounds a user turn's content in a chat template's token ids."""

    openers: tuple[Marker, ...]  # end right before a user turn's content
    others: tuple[Marker, ...]  # end right before another role's content (the longest match wins)
    closer: Marker  # starts right after a user turn's content
    follow: frozenset[str] | None  # texts that start a turn after a closer; None: anything may


def _common_prefix(rows: list[Run]) -> Run:
    shortest, size = min(rows, key=len), 0
    while size < len(shortest) and all(row[size] == shortest[size] for row in rows):
        size += 1
    return shortest[:size]


def _ends_with(row: Run, end: Run) -> bool:
    return len(row) >= len(end) and row[len(row) - len(end) :] == end


def markers_from_runs(
    user_pres: list[Run],
    other_pres: list[Run],
    posts: list[Run],
    end_posts: list[Run],
    texts: Callable[[Run], tuple[str, ...]],
    name: str,
) -> TurnMarkers:
    """Turn markers from the id runs around sentinel contents.

    ``user_pres``/``other_pres``: the runs before each user / other content (since the previous
    content); ``posts``: the runs after each user content up to the next content (or the
    generation prompt); ``end_posts``: the runs after a user content that ends the chat; ``texts``:
    token texts of a run; ``name`` names the template in errors. Openers: the common end of the
    user runs, unless another role's run ends with it too; then every distinct user run (templates
    that put the system prompt inside the first user turn). Closer: the common start of the runs
    after user contents.

    Raises:
        SaeguardError: no run marks where a user turn starts or ends.
    """
    unmarked = (
        f"{name} does not mark where a user turn starts, so the user's tokens cannot be found in raw ids: "
        "encode the chat with encode_chat (guard.generate does) or send plain text"
    )
    user_pres, other_pres = [r for r in user_pres if r], [r for r in other_pres if r]
    require(bool(user_pres), unmarked)
    openers = [_common_prefix([r[::-1] for r in user_pres])[::-1]]
    if not openers[0] or any(_ends_with(other, openers[0]) for other in other_pres):
        runs = sorted(set(user_pres), key=len)
        openers = [r for r in runs if not any(o != r and _ends_with(r, o) for o in runs)]
    require(not any(_ends_with(other, opener) for opener in openers for other in other_pres), unmarked)
    closer = (_common_prefix(posts + end_posts) if posts + end_posts else ()) or _common_prefix(posts or [()])
    require(bool(closer), f"{name} does not mark where a user turn ends: encode the chat with encode_chat")
    rests = [post[len(closer) :] for post in posts]
    follow = None if any(not r for r in rests) else frozenset("".join(texts(r[:1])) for r in rests)

    def marker(run: Run) -> Marker:
        return Marker(run, texts(run))

    markers = TurnMarkers(
        tuple(map(marker, openers)), tuple(map(marker, set(other_pres))), marker(closer), follow
    )
    require(
        all(m.text for m in (*markers.openers, markers.closer)),
        f"{name} marks user turns with tokens that have no text: encode the chat with encode_chat",
    )
    return markers


class _Scan:
    """Raw ids as one string of token texts, searched for markers."""

    def __init__(
        self, ids: list[int], pieces: Sequence[str], special: set[int], markers: TurnMarkers
    ) -> None:
        self.ids, self.markers, self.special = ids, markers, special
        self.text = "".join(pieces)
        self.starts = [0]  # the character where each token starts, and the end
        for piece in pieces:
            self.starts.append(self.starts[-1] + len(piece))

    def at(self, marker: Marker, pos: int) -> bool:
        """Whether ``marker`` matches at character ``pos`` (its special tokens as those very ids)."""
        if not self.text.startswith(marker.text, pos):
            return False
        for id_, piece in zip(marker.ids, marker.pieces, strict=True):
            if id_ in self.special:
                k = bisect.bisect_left(self.starts, pos)
                if k >= len(self.ids) or self.starts[k] != pos or self.ids[k] != id_:
                    return False
            pos += len(piece)
        return True

    def find(self, marker: Marker, pos: int) -> int:
        """The first character >= ``pos`` where ``marker`` matches, or -1."""
        while (pos := self.text.find(marker.text, pos)) >= 0 and not self.at(marker, pos):
            pos += 1
        return pos

    def content_end(self, start: int) -> tuple[int, int]:
        """(character where the content from ``start`` ends, character after its closer).

        A closer ends the turn at the end of the ids, or before what starts a turn.
        """
        closer, follow, size = self.markers.closer, self.markers.follow, len(self.text)
        pos = start
        while (pos := self.find(closer, pos)) >= 0:
            after = pos + len(closer.text)
            if (
                after >= size
                or follow is None
                or any(self.text.startswith(f, after) for f in follow)
                or any(self.at(m, c) for m in self.markers.openers for c in (pos, after))
            ):
                return pos, after
            pos += 1
        tail = [c for c in self.starts if start <= c < size and closer.text.startswith(self.text[c:])]
        return (tail[0], size) if tail else (size, size)  # the ids may stop inside the closer

    def mask(self) -> list[bool] | None:
        """Per id, inside a user turn's content; None when no turn marker occurs anywhere."""
        mask, found, pos = [False] * len(self.ids), False, 0
        candidates = [(m, True) for m in self.markers.openers] + [(m, False) for m in self.markers.others]
        while hits := [(at, -len(m.text), user) for m, user in candidates if (at := self.find(m, pos)) >= 0]:
            at, minus_length, user = min(hits)  # the first match, the longest there
            found, pos = True, at - minus_length
            if user:
                end, after = self.content_end(pos)
                first = bisect.bisect_right(self.starts, pos) - 1  # the token holding the first character
                last = bisect.bisect_left(self.starts, end)  # the tokens that start before the end
                mask[first:last] = [True] * max(0, last - first)
                pos = max(after, pos + 1)
        return mask if found else None


def scan_user_turns(
    ids: list[int], pieces: Sequence[str], special: set[int], markers: TurnMarkers
) -> list[bool] | None:
    """Per id, whether it lies inside a user turn's content; None when no turn marker occurs (plain text).

    ``pieces``: the token text of each id; ``special``: the tokenizer's special ids. A user turn
    runs from the end of an opener (unless a longer marker of another role matches there) to the
    next closer that is followed by the end of the ids or by what starts a turn.
    """
    return _Scan(ids, pieces, special, markers).mask()

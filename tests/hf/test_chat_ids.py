"""hf/chat_ids.py: turn markers from sentinel runs, and the scan of raw ids (issue 13 §2)."""

from __future__ import annotations

import pytest

from saeguard.errors import SaeguardError
from saeguard.hf.chat_ids import Marker, TurnMarkers, markers_from_runs, scan_user_turns

# a toy vocabulary: id -> token text; 0-2 are special
TEXTS = {
    0: "<s>",
    1: "<u>",
    2: "<e>",
    3: "user",
    4: "Ċ",
    5: "hi",
    6: "Ġthere",
    7: "assistant",
    8: "ok",
    9: "ĊĊ",
}
SPECIAL = {0, 1, 2}


def texts(run: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(TEXTS[i] for i in run)


def marker(*ids: int) -> Marker:
    return Marker(ids, texts(ids))


CHATML = TurnMarkers(
    openers=(marker(1, 3, 4),),
    others=(marker(2, 4, 1, 7, 4),),
    closer=marker(2, 4),
    follow=frozenset({"<u>"}),
)


def scan(ids: list[int], markers: TurnMarkers = CHATML) -> list[bool] | None:
    return scan_user_turns(ids, [TEXTS[i] for i in ids], SPECIAL, markers)


def test_the_common_end_of_the_runs_before_user_contents_is_the_opener():
    markers = markers_from_runs(
        user_pres=[(0, 1, 3, 4), (2, 4, 1, 3, 4)],
        other_pres=[(2, 4, 1, 7, 4)],
        posts=[(2, 4, 1, 7, 4)],
        end_posts=[(2, 4)],
        texts=texts,
        name="toy",
    )
    assert [m.ids for m in markers.openers] == [(1, 3, 4)]
    assert markers.closer.ids == (2, 4)
    assert markers.follow == frozenset({"<u>"})


def test_runs_whose_common_end_another_role_shares_are_kept_whole():
    # both user runs end in "Ċ", and so does the assistant's: "Ċ" cannot be the opener
    markers = markers_from_runs(
        user_pres=[(0, 3, 4), (2, 5, 4)],
        other_pres=[(2, 7, 4)],
        posts=[(2,)],
        end_posts=[],
        texts=texts,
        name="toy",
    )
    assert sorted(m.ids for m in markers.openers) == [(0, 3, 4), (2, 5, 4)]


def test_a_template_whose_user_turns_read_like_other_turns_is_refused():
    with pytest.raises(SaeguardError, match="toy does not mark where a user turn starts"):
        markers_from_runs([(4,)], [(4,)], [(4,)], [], texts, "toy")
    with pytest.raises(SaeguardError, match="toy does not mark where a user turn ends"):
        markers_from_runs([(1, 3)], [(7,)], [(5,), (6,)], [], texts, "toy")


def test_the_scan_marks_each_user_turn_between_its_opener_and_closer():
    ids = [0, 1, 3, 4, 5, 6, 2, 4, 1, 7, 4, 8, 2, 4, 1, 3, 4, 5, 2, 4, 1, 7, 4]
    assert scan(ids) == [i in (4, 5, 17) for i in range(len(ids))]


def test_a_closer_the_user_typed_mid_message_stays_the_users():
    ids = [1, 3, 4, 5, 2, 4, 6, 2, 4, 1, 7, 4]  # "<e>Ċ" then "Ġthere": no turn starts there
    assert scan(ids) == [False] * 3 + [True] * 4 + [False] * 5


def test_a_token_merged_across_the_boundary_counts_as_the_users():
    # "ĊĊ" holds the opener's "Ċ" and a newline of the content
    ids = [1, 3, 9, 5, 2, 4]
    assert scan(ids) == [False, False, True, True, False, False]


def test_ids_that_stop_inside_the_closer_end_the_turn_there():
    assert scan([1, 3, 4, 5, 2]) == [False, False, False, True, False]


def test_plain_ids_have_no_turns():
    assert scan([0, 5, 6]) is None


def test_a_special_marker_token_must_be_that_very_id():
    # the texts "<u>user" spelled by non-special tokens do not open a turn
    texts_ = {**TEXTS, 10: "<u>"}
    assert scan_user_turns([10, 3, 4, 5], [texts_[i] for i in [10, 3, 4, 5]], SPECIAL, CHATML) is None

"""Paths and JSON read or written by saeguard fail in one line (issue 11 §3-§5, reliability probe)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saeguard import SaeguardError
from saeguard.io import as_path, check_unicode, parse_json, staged_folder, write_bytes_atomic


@pytest.mark.parametrize("value", [None, 123, "", b"guards"])
def test_a_path_of_another_type_is_refused(value):
    with pytest.raises(SaeguardError, match="must be a path"):
        as_path(value, "the output folder")


def test_json_nested_beyond_the_recursion_limit_is_one_error():
    with pytest.raises(SaeguardError, match="nested too deeply"):
        parse_json("[" * 100_000 + "]" * 100_000, "x.json")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_constants_are_not_numbers(constant):
    with pytest.raises(SaeguardError, match=f"{constant.lstrip('-')} is not a number"):
        parse_json(f'{{"tau": {constant}}}', "x.json")


def test_valid_json_is_read():
    assert parse_json(json.dumps({"tau": 0.5}), "x.json") == {"tau": 0.5}


def test_a_folder_under_a_file_is_refused_and_nothing_is_left(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SaeguardError, match="cannot write"), staged_folder(blocker / "sub"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_folder_where_a_file_is_is_refused(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SaeguardError, match="is a file"), staged_folder(blocker):
        pass
    assert blocker.read_text() == "x"


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a read-only /sys")
def test_a_folder_on_a_read_only_mount_is_refused():
    with (
        pytest.raises(SaeguardError, match="cannot write /sys/saeguard-test"),
        staged_folder("/sys/saeguard-test"),
    ):
        pass


def test_a_file_under_a_file_is_refused(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SaeguardError, match="cannot write"):
        write_bytes_atomic(blocker / "out.json", b"{}")


@pytest.mark.parametrize(
    "text", ['{"text": "cell \\ud800"}', '["\\udc00 gene"]', '{"\\ud83d": 1}', '{"a": [[{"b": "x\\uDBFF"}]]}']
)
def test_json_with_an_unpaired_surrogate_is_one_error(text):
    with pytest.raises(SaeguardError, match=r"^x.jsonl:3 holds an unpaired surrogate \(U\+D[89A-F]"):
        parse_json(text, "x.jsonl:3")


def test_json_with_a_surrogate_pair_is_read_as_its_character():
    assert parse_json('{"text": "\\ud83e\\uddec cell"}', "x.json") == {"text": "\U0001f9ec cell"}


def test_check_unicode_names_the_position_and_passes_text_through():
    assert check_unicode("caf\xe9 \U0001f9ec", "the prompt") == "caf\xe9 \U0001f9ec"
    with pytest.raises(
        SaeguardError, match=r"the prompt holds an unpaired surrogate \(U\+DC00 at character 4\)"
    ):
        check_unicode("cell\udc00", "the prompt")


def test_a_binary_records_file_is_one_line_error_not_a_traceback(tmp_path):
    # Regression (new-user probe): `saeguard report --sweep binary.bin` raised UnicodeDecodeError.
    from saeguard.io import read_jsonl_records

    path = tmp_path / "binary.bin"
    path.write_bytes(bytes(range(128, 256)) * 8)
    with pytest.raises(SaeguardError, match="binary.bin is not UTF-8 text, so not a file of sweep records"):
        read_jsonl_records(path, dict, "sweep")

"""`saeguard explain GUARD [--prompt] [--forget --retain] --output DIR` from the shell."""

from __future__ import annotations

import json
import sys

import pytest

from saeguard.cli import main


def _run(args, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["saeguard", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_writes_the_report_and_the_prompt_trace(
    fitted, tokenizer, forget_corpus, tmp_path, monkeypatch, capsys
):
    model, guard = fitted
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    guard.save(tmp_path / "guard")
    (tmp_path / "forget.txt").write_text("\n\n".join(forget_corpus))
    args = ["explain", str(tmp_path / "guard"), "--model", str(tmp_path / "model"), "--device", "cpu"]
    args += ["--forget", str(tmp_path / "forget.txt"), "--contexts", "2", "--max-chunks", "4"]
    args += ["--prompt", "what is the cell virus gene", "--output", str(tmp_path / "report")]
    code, out, err = _run(args, monkeypatch, capsys)
    assert code == 0, err
    assert "prompt flagged" in out and f"report: {tmp_path / 'report' / 'index.html'}" in out
    data = json.loads((tmp_path / "report" / "explain.json").read_text())
    assert data["scanned"] == {"forget": len(forget_corpus)}
    assert all(len(latent["scans"]["forget"]["contexts"]) <= 2 for latent in data["latents"])
    trace = json.loads((tmp_path / "report" / "trace.json").read_text())
    assert trace["flagged"] and trace["latent_ids"] == [int(i) for i in guard.latents.ids]


def test_explain_of_a_missing_guard_is_one_line(tmp_path, monkeypatch, capsys):
    code, _, err = _run(
        ["explain", str(tmp_path / "nothing"), "--output", str(tmp_path / "r")], monkeypatch, capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error:")
    assert not (tmp_path / "r").exists()


def _no_model(*_args, **_kwargs):
    raise AssertionError("the model must not load")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--forget", "missing.txt"], "missing.txt"),
        (["--forget", "empty.txt"], "the forget text to scan is empty"),
        (["--retain", "bad.jsonl"], "bad.jsonl"),
        (["--prompt", "  "], "--prompt is empty"),
    ],
)
def test_bad_text_or_prompt_is_one_line_before_the_model_loads(extra, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("saeguard.cli.explain_commands.load_cli_model", _no_model)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{not json\n')
    code, _, err = _run(["explain", "guard", "--output", "r", *extra], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not (tmp_path / "r").exists()


def test_an_output_folder_of_other_files_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("saeguard.cli.explain_commands.load_cli_model", _no_model)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = _run(["explain", "guard", "--output", str(tmp_path / "mine")], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "does not hold a saeguard explain report" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"

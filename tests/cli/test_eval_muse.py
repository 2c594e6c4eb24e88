"""`saeguard eval --muse BOOK`: a real run on a tiny model, what --quick/--limit/--method choose, and
one-line errors for bad input before any model loads."""

from __future__ import annotations

import json

import pytest


def _no_model(*_args, **_kwargs):
    raise AssertionError("the model must not load")


def test_eval_muse_quick_measures_the_original_and_the_chosen_method(workspace, cli):
    output = workspace / "muse"  # the workspace's tiny vocabulary reads most of the novel as <unk>: fast
    args = ["eval", "--muse", "persuasion", "--model", str(workspace / "model"), "--device", "cpu"]
    code, out, err = cli([*args, "--method", "GA", "--quick", "--output", str(output)])
    assert code == 0, err
    assert f"report: {output / 'index.html'}" in out and "note: MUSE Books, forgetting persuasion" in err
    saved = json.loads((output / "muse.json").read_text())
    assert [row["method"] for row in saved["rows"]] == ["original", "ga"]
    original = saved["rows"][0]["metrics"]
    assert original["verbmem_samples"] == 16 and original["privleak_samples"] == 16
    assert original["knowmem_forget"]["questions"] == 16 == original["knowmem_retain"]["questions"]
    assert (output / "index.html").read_text().count("<tr>") == 3  # header, original, ga


def test_limit_overrides_quick_and_methods_keep_their_order_without_repeats(workspace, cli, monkeypatch):
    seen = {}

    def fake_run_books(model, tokenizer, config, *, sae, guard, output, log):
        seen.update(config=config, sae=sae, guard=guard)

    monkeypatch.setattr("saeguard.runs.muse_books.run_books", fake_run_books)
    args = ["eval", "--muse", "austen:emma", "--model", str(workspace / "model"), "--device", "cpu"]
    args += ["--method", "rmu", "--method", "ga", "--method", "rmu", "--quick", "--limit", "5"]
    code, _, err = cli([*args, "--output", str(workspace / "m")])
    assert code == 0, err
    config = seen["config"]
    assert config.book == "emma" and config.methods == ("rmu", "ga")
    assert (config.muse.sizes.verbmem_samples, config.muse.sizes.privleak_samples) == (5, 5)
    assert seen["sae"] is None and seen["guard"] is None  # no DSG: no SAE is resolved or trained


@pytest.mark.parametrize(
    ("book", "extra", "message"),
    [
        ("hamlet", [], "unknown Austen novel 'hamlet': use one of"),
        ("emma", ["--mcq", "wiki:biology"], "give --mcq or --muse, not both"),
        ("emma", ["--method", "sgd"], "unknown --method 'sgd': use dsg or one of ga, graddiff, npo, rmu"),
        ("emma", ["--method", "ga", "--guard", "g"], "--guard is the guard DSG is measured with"),
        ("emma", ["--limit", "1"], "--limit must be at least 2"),
        ("emma", ["--guard", "no-such-guard"], "no-such-guard"),
        ("emma", ["--model", "my/model"], "DSG on --model my/model needs --guard"),
    ],
)
def test_bad_muse_input_is_one_line_before_the_model_loads(
    book, extra, message, tmp_path, cli, monkeypatch, error_lines
):
    monkeypatch.setattr("saeguard.cli.muse_commands.load_cli_model", _no_model)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["eval", "--muse", book, "--output", str(tmp_path / "m"), *extra])
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not (tmp_path / "m").exists()


def test_an_output_folder_of_other_files_is_refused_before_the_model_loads(
    tmp_path, cli, monkeypatch, error_lines
):
    monkeypatch.setattr("saeguard.cli.muse_commands.load_cli_model", _no_model)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = cli(["eval", "--muse", "emma", "--method", "ga", "--output", str(tmp_path / "mine")])
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "does not hold a MUSE report" in lines[0]
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_muse_options_without_muse_are_refused(cli, error_lines):
    code, _, err = cli(["eval", "--mcq", "wiki:biology", "--quick"])
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "--method and --quick belong to --muse BOOK" in lines[0]

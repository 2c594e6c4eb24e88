"""`saeguard eval` output: counts and Wilson intervals beside every accuracy, the unfiltered base."""

from __future__ import annotations

import json

from saeguard.testing import make_items


def _items_file(workspace, n: int = 8):
    rows = [
        {"question": it.question, "choices": list(it.choices), "answer": it.answer, "id": it.id}
        for it in make_items(n)
    ]
    path = workspace / "mcq.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return path


def test_eval_table_and_json_give_counts_intervals_and_the_unfiltered_base(workspace, cli, fit_args):
    assert cli(fit_args(workspace / "guard"))[0] == 0
    items = _items_file(workspace)
    args = [
        "eval",
        "--model",
        str(workspace / "model"),
        "--guard",
        str(workspace / "guard"),
        "--device",
        "cpu",
    ]
    code, out, err = cli(
        [*args, "--mcq", str(items), "--permutations", "cyclic", "--output", str(workspace / "ev")]
    )
    assert code == 0, err
    assert "cloze scorer" in out and "all 4 option orders" in out and "Wilson 95% interval" in out
    summary = json.loads((workspace / "ev" / "eval.json").read_text())["sets"][0]
    base = summary["unguarded_all_items"]
    assert base["n"] == 8 and base["accuracy"] == base["correct"] / 8
    assert base["wilson95"][0] <= base["accuracy"] <= base["wilson95"][1]
    assert f"{base['correct']}/8 = " in out  # the unfiltered base accuracy, as a count
    known = summary["known"]
    assert summary["known_orders"] == 4 and 0 <= known <= 8
    warnings = [line for line in err.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1 and (
        f"only {known} known items" in warnings[0] or "no known items" in warnings[0]
    )
    if known:
        assert summary["unguarded_known"]["n"] == known and summary["guarded"]["n"] == known
        assert summary["gate_fired"]["n"] == known


def test_eval_without_the_known_filter_scores_every_item_guarded(workspace, cli, fit_args):
    assert cli(fit_args(workspace / "guard"))[0] == 0
    args = [
        "eval",
        "--model",
        str(workspace / "model"),
        "--guard",
        str(workspace / "guard"),
        "--device",
        "cpu",
    ]
    code, out, err = cli(
        [*args, "--mcq", str(_items_file(workspace)), "--no-known", "--output", str(workspace / "ev")]
    )
    summary = json.loads((workspace / "ev" / "eval.json").read_text())["sets"][0]
    assert code == 0 and summary["known"] is None and summary["guarded_on"] == "all items"
    assert summary["guarded"]["n"] == 8 and "guarded, all items" in out


def test_eval_of_a_missing_file_says_not_found_and_a_bad_name_lists_the_sets(cli, workspace, error_lines):
    model = ["--model", str(workspace / "model"), "--device", "cpu", "--no-known"]
    code, _, err = cli(["eval", "--mcq", str(workspace / "missing.jsonl"), *model])
    assert code == 2 and error_lines(err)[-1] == (
        f"error: MCQ file {workspace / 'missing.jsonl'} not found: pass a .jsonl file or hf:name/config:split"
    )
    code, _, err = cli(["eval", "--mcq", "nosuchset", *model])
    assert code == 2 and error_lines(err)[-1].startswith(
        "error: unknown MCQ set 'nosuchset'; choose one of: wiki"
    )

"""The attack report: JSON rows with counts, the plots, the page."""

from __future__ import annotations

import json

from saeguard.attacks import AttackRecord, Outcome
from saeguard.attacks.report import summary_rows, write_report


def _records() -> list[AttackRecord]:
    clean = AttackRecord(
        "clean", "ctx", "clean", {},
        {
            "forget": [Outcome("f1", True, 0.5, True, False), Outcome("f2", True, 0.5, True, False)],
            "retain": [Outcome("r1", False, 0.0), Outcome("r2", True, 0.4, True, False)],
        },
    )  # fmt: skip
    rows = []
    for tokens, through in ((100, 1), (400, 2)):
        forget = [Outcome(f"f{i}", i > through, 0.1, True, i <= through) for i in (1, 2)]
        params = {"source": "austen", "tokens": tokens, "position": "before", "seed": 0}
        rows.append(
            AttackRecord(
                f"dilution:tokens={tokens}",
                "ctx",
                "dilution",
                params,
                {"forget": forget, "retain": [Outcome("r1", False, 0.0), Outcome("r2", False, 0.1)]},
            )  # fmt: skip
        )
    failed = AttackRecord(
        "multiturn:turns=3,seed=0", "ctx", "multiturn", {"turns": 3, "seed": 0}, error="boom"
    )
    return [clean, *rows, failed]


def test_summary_rows_carry_every_rate_with_its_counts():
    rows = {row["key"]: row for row in summary_rows(_records())}
    assert rows["dilution:tokens=100"]["metrics"]["forget"]["success"] == {"k": 1, "n": 2, "value": 0.5}
    assert rows["dilution:tokens=400"]["metrics"]["forget"]["success"] == {"k": 2, "n": 2, "value": 1.0}
    assert rows["dilution:tokens=100"]["metrics"]["forget"]["fired"] == {"k": 1, "n": 2, "value": 0.5}
    assert rows["clean"]["metrics"]["retain"]["broken"] == {"k": 1, "n": 2, "value": 0.5}
    assert rows["multiturn:turns=3,seed=0"]["error"] == "boom"
    assert rows["multiturn:turns=3,seed=0"]["metrics"] == {}


def test_write_report_writes_json_plots_and_page(tmp_path):
    guard = {"layer": 6, "n_features": 20, "gate_statistic": "activation", "tau": 0.8, "clamp": "5x"}
    page = write_report(
        tmp_path, _records(), guard=guard | {"gate_rule": "window"}, sets={"forget": 2, "retain": 2}
    )
    assert page == tmp_path / "index.html"
    for name in ("attack.json", "dilution.png", "settings.png", "index.html", "attack.md"):
        assert (tmp_path / name).is_file()
    data = json.loads((tmp_path / "attack.json").read_text())
    assert data["sets"] == {"forget": 2, "retain": 2} and len(data["rows"]) == 4
    markdown = (tmp_path / "attack.md").read_text()
    assert "| dilution | source=austen, tokens=400, position=before | 100.0% (n=2) |" in markdown
    assert "the guard blocks 2 of the 2 forget questions without an attack" in markdown
    assert "| clean | - | - | 100.0% (n=2) | 50.0% (n=2) | - | 50.0% (n=2) |" in markdown
    assert "rule window" in markdown and "| multiturn | turns=3 | error | boom |" in markdown


def _with_prompts() -> list[AttackRecord]:
    records = _records()
    prompts = {
        "prompts:forget": [Outcome("p1", True, 0.6), Outcome("p2", False, 0.1), Outcome("p3", True, 0.7)],
        "prompts:benign": [Outcome("b1", False, 0.0), Outcome("b2", True, 0.5)],
    }
    for record in records[:2]:  # the clean row and one dilution row measured the --prompts file
        record.outcomes.update(prompts)
    return records


def test_prompt_file_results_get_their_own_columns_with_counts(tmp_path):
    guard = {"layer": 6, "n_features": 20, "gate_statistic": "fraction", "tau": 0.1, "clamp": "5x"}
    write_report(tmp_path, _with_prompts(), guard=guard, sets={"forget": 2, "retain": 2, "prompts": 5})
    markdown = (tmp_path / "attack.md").read_text()
    assert "| forget prompts fired | benign prompts FP |" in markdown
    assert "| clean | - | - | 100.0% (n=2) | 50.0% (n=2) | - | 50.0% (n=2) | 66.7% (n=3) | 50.0% (n=2) |" in (
        markdown
    )
    assert "| dilution | source=austen, tokens=400, position=before | 100.0% (n=2) |" in markdown
    assert "prompts 5" in markdown
    rows = {row["key"]: row for row in json.loads((tmp_path / "attack.json").read_text())["rows"]}
    assert rows["clean"]["metrics"]["prompts:forget"] == {"k": 2, "n": 3, "value": 2 / 3}


def test_without_the_known_filter_the_report_does_not_say_known(tmp_path):
    guard = {"layer": 6, "n_features": 20, "gate_statistic": "fraction", "tau": 0.1, "clamp": "5x"}
    write_report(tmp_path, _records(), guard=guard, sets={"forget": 2, "retain": 2}, known=False)
    markdown = (tmp_path / "attack.md").read_text()
    assert "known questions" not in markdown.lower().replace("no known filter", "")
    assert "on all drawn questions (no known filter)" in markdown
    assert json.loads((tmp_path / "attack.json").read_text())["known_filter"] is False
    write_report(tmp_path / "k", _records(), guard=guard, sets={"forget": 2, "retain": 2})
    assert "Known questions: forget 2, retain 2" in (tmp_path / "k" / "attack.md").read_text()

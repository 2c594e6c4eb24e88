"""The experiment report page (experiments/report.py)."""

from __future__ import annotations

from saeguard.experiments.report import ExperimentResult, write_experiment


def test_a_run_without_headlines_still_writes_its_page_and_says_why(tmp_path):
    # Regression (reliability probe): a quick sequential run on the tiny model ended with
    # "table in 'Headlines' has no rows" after the work, leaving no index.html.
    result = ExperimentResult(
        experiment="sequential",
        config={},
        context="ctx",
        model={"name": "tiny", "fingerprint": "0"},
        sae=None,
        known={},
        threat_model="none",
        headlines=[],
        records=[],
        computed=0,
        skipped=0,
        seconds=1.0,
        output=str(tmp_path),
    )
    write_experiment(result, title="t", summary="s", sections=[], figures={})
    page = (tmp_path / "index.html").read_text()
    assert "No headline: no point of the grid produced the numbers it needs" in page
    assert (tmp_path / "sequential.json").is_file()

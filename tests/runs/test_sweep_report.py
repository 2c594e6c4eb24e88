"""Report folder: Pareto plot, rho distributions, table; images referenced relatively."""

from __future__ import annotations

import json

from saeguard.runs.sweep import DatasetMetrics, SweepPoint, SweepRecord
from saeguard.runs.sweep_report import pareto_front, write_report


def _record(key, forget, utility, clamp=100.0):
    point = None if key == "base" else SweepPoint(95.0, 20, f"{clamp:g}", 95.0)
    metrics = {"x": DatasetMetrics(forget, 1, 2, 0.5)}
    return SweepRecord(key, "ctx", point, {"tau": 0.3}, metrics, metrics, forget, utility)


def test_pareto_front():
    points = [(0.3, 0.98), (0.4, 0.995), (0.5, 0.99), (0.6, 1.0), (0.3, 0.97)]
    assert pareto_front(points) == [0, 1, 3]


def test_write_report(tmp_path):
    records = [_record("base", 1.0, 1.0), _record("a", 0.3, 0.98), _record("b", 0.4, 0.995, clamp=25.0)]
    path = tmp_path / "sweep.jsonl"
    path.write_text("".join(json.dumps(r.__dict__, default=lambda o: o.__dict__) + "\n" for r in records))
    index = write_report(
        tmp_path / "report",
        sweep=path,
        tau=0.3,
        distributions={"retain": [0.1, 0.2, 0.25], "forget": [0.4, 0.6], "near": [0.3]},
    )
    folder = index.parent
    names = {p.name for p in folder.iterdir()}
    assert names == {"index.html", "report.md", "pareto.png", "rho.png", "score.json"}
    page, markdown = index.read_text(), (folder / "report.md").read_text()
    assert 'src="pareto.png"' in page and 'src="rho.png"' in page and str(tmp_path) not in page
    assert "](pareto.png)" in markdown and "| b |" in markdown
    assert json.loads((folder / "score.json").read_text())["score"] == 0.6  # 1 - 0.4 (b keeps >= 0.99)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left behind

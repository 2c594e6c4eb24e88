"""Every HTML report (sweep, comparison, demo) is one styled page: its images exist, no section is
empty, every accuracy shows its n, pages link to each other; one is loaded in headless chromium."""

from __future__ import annotations

import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from saeguard.report.demo_page import demo_nav, write_demo_page
from saeguard.report.figures import plot_rho
from saeguard.runs.compare_report import write_compare_report
from saeguard.runs.compare_types import CompareConfig, CompareRecord, CompareResult, summarize
from saeguard.runs.sweep import DatasetMetrics, SweepPoint, SweepRecord
from saeguard.runs.sweep_report import write_report


class Outline(HTMLParser):
    """What a reader sees: sections with their content, images, links, tables (header + rows)."""

    CONTENT = {"p", "figure", "table", "dl"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[dict] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.tables: list[tuple[list[str], list[list[str]]]] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._heading = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append({"title": "", "content": 0})
        elif tag == "h2":
            self._heading = True
        elif tag in self.CONTENT and self.sections:
            self.sections[-1]["content"] += 1
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "table":
            self.tables.append(([], []))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "h2":
            self._heading = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            header, rows = self.tables[-1]
            (rows if header else header).extend([self._row] if header else self._row)
            self._row = None

    def handle_data(self, data):
        if self._heading:
            self.sections[-1]["title"] += data
        if self._cell is not None:
            self._cell.append(data)


def check_page(path: Path) -> Outline:
    """The structural promises of every report page."""
    page = path.read_text()
    outline = Outline(page)
    assert page.startswith("<!doctype html>") and "<style>" in page and "saeguard" in page
    assert outline.sections and all(s["title"].strip() and s["content"] for s in outline.sections)
    assert outline.images and all((path.parent / src).is_file() for src in outline.images)
    for header, rows in outline.tables:
        assert rows and all(len(row) == len(header) for row in rows)
        rates = [i for i, h in enumerate(header) if "acc" in h or h in ("unguarded", "guarded")]
        for row in rows:
            assert all("(n=" in row[i] for i in rates if row[i] != "-"), (header, row)
    return outline


def _sweep_record(key, forget, utility, n=(4, 6)):
    point = None if key == "base" else SweepPoint(95.0, 20, "5x", 95.0)
    return SweepRecord(
        key,
        "ctx",
        point,
        {"tau": 0.7},
        {"bio": DatasetMetrics(forget, round(forget * n[0]), n[0], 0.5)},
        {"hist": DatasetMetrics(utility, round(utility * n[1]), n[1], 0.1)},
        forget,
        utility,
    )


def test_sweep_page_shows_counts_and_the_activation_axis(tmp_path):
    records = [_sweep_record("base", 1.0, 1.0), _sweep_record("a", 0.25, 1.0)]
    index = write_report(
        tmp_path,
        sweep=records,
        tau=0.7,
        distributions={"forget <b>": [1.6, 2.2], "retain": [0.1, 0.3, 0.5]},
        statistic="activation",
    )
    outline = check_page(index)
    page = index.read_text()
    assert [s["title"] for s in outline.sections] == [
        "Forget vs utility",
        "Gate statistic rho",
        "Configurations",
    ]
    assert "forget accuracy 0.2500 (n=4 forget items)" in page and "(n=6 utility items)" in page
    assert "forget &lt;b&gt;" in page and "mu_j" in page and "fraction of counted" not in page
    header, rows = outline.tables[0]  # the rho table: inputs and the share above tau
    assert rows[0][:2] == ["forget <b>", "2"] and rows[0][-1] == "100.0% (n=2)"


def test_demo_pages_link_to_each_other_and_say_what_they_hold(tmp_path):
    plot_rho({"retain": [0.1, 0.2]}, 0.3, tmp_path / "rho.png", statistic="activation")
    index = write_report(tmp_path, distributions={"retain": [0.1, 0.2]}, tau=0.3, nav=demo_nav())
    assert "No sweep was given" in index.read_text() and "No guarded configuration" not in index.read_text()
    assert "demo.html" in check_page(index).links
    data = {
        "config": {
            "forget": "wiki:biology",
            "forget_mcq": "wiki:biology",
            "retain_mcq": ["wiki:history"],
            "near_mcq": ["wiki:technology"],
            "permutations": "cyclic",
            "scorer": "cloze",
        },
        "guard": {
            "layer": 3,
            "n_features": 20,
            "tau": 0.3,
            "gate_statistic": "activation",
            "clamp": "5x",
            "clamp_value": 12.5,
            "clamp_scope": "input",
            "model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"},
            "calibration": {"retain": {"count": 2, "mean": 0.15, "median": 0.15, "flagged_fraction": 0.0}},
        },
        "accuracy": {
            "forget": {
                "items": 6,
                "known": 4,
                "base_accuracy": 1.0,
                "guarded_accuracy": 0.25,
                "flagged_fraction": 1.0,
            },
            "near": {
                "items": 3,
                "known": 0,
                "base_accuracy": math.nan,
                "guarded_accuracy": math.nan,
                "flagged_fraction": math.nan,
            },
        },
        "text": {
            "loss": {},
            "firing": {"forget": {"count": 8, "flagged_fraction": 0.5, "mean_rho": 1.7, "rho": [1.7]}},
        },
        "generations": [
            {
                "topic": "forget",
                "prompt": "What is <DNA>?",
                "flagged": True,
                "rho": 1.9,
                "unguarded": "A",
                "guarded": "B",
            }
        ],
        "seconds": {"total": 12.0},
    }
    demo = write_demo_page(data, tmp_path)
    outline = check_page(demo)
    page = demo.read_text()
    assert "index.html" in outline.links and "forgetting biology in SmolLM2-135M-Instruct" in page
    assert "What is &lt;DNA&gt;?" in page and "flagged, rho = 1.90" in page
    accuracy = outline.tables[0][1]
    assert accuracy[0][3:5] == ["100.0% (n=4)", "25.0% (n=4)"] and accuracy[1][3] == "- (n=0)"


def _compare_record(key, method, forget, utility):
    return CompareRecord(
        key,
        method,
        {},
        "ctx",
        forget={"bio": DatasetMetrics(forget, round(5 * forget), 5, None)},
        utility={"hist": DatasetMetrics(utility, round(7 * utility), 7, None)},
        forget_accuracy=forget,
        utility_accuracy=utility,
        forget_perplexity=20.0,
        retain_perplexity=15.0,
    )


def test_compare_page_shows_counts_for_every_method(tmp_path):
    config = CompareConfig(methods=["dsg", "ga"])
    records = [_compare_record("dsg:a", "dsg", 0.4, 1.0), _compare_record("ga:a", "ga", 0.2, 0.5)]
    result = CompareResult(
        config=config,
        context="ctx",
        model={"name": "tiny"},
        sae=None,
        known={"bio": {"known": 5, "total": 8}, "hist": {"known": 7, "total": 9}},
        base=_compare_record("base", "base", 1.0, 1.0),
        records=records,
        summaries=summarize(records, config.methods, config.utility_threshold),
        statistics_seconds=None,
        computed=2,
        skipped=0,
        seconds=3.0,
        output=str(tmp_path),
    )
    write_compare_report(result, tmp_path)
    outline = check_page(tmp_path / "index.html")
    best = outline.tables[0][1]
    assert [row[3] for row in best] == ["1.000 (n=5)", "0.400 (n=5)", "0.200 (n=5)"]
    assert best[2][1] == "ga:a (none eligible: highest utility)"
    assert "| base | - | - | 1.000 (n=5) | 1.000 (n=7) |" in (tmp_path / "compare.md").read_text()


@pytest.mark.browser
def test_a_report_page_loads_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    records = [_sweep_record("base", 1.0, 1.0), _sweep_record("a", 0.25, 1.0)]
    index = write_report(tmp_path / "report", sweep=records, distributions={"retain": [0.1, 0.3]}, tau=0.2)
    shot = tmp_path / "page.png"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--dump-dom"]
    dom = subprocess.run(
        [*command, f"--screenshot={shot}", "--window-size=1200,1600", index.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "<h2>Forget vs utility</h2>" in dom and 'src="pareto.png"' in dom
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1200, 1600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # text, plots and table lines, not a blank page

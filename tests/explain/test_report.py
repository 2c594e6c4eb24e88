"""The explain report: its sections, figures and token lines, the JSON beside it, and a real browser load."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from saeguard.explain.guard import explain_guard
from saeguard.explain.latents import ScanConfig
from saeguard.explain.prompt import trace_latents
from saeguard.explain.report import write_explain_report
from saeguard.report import Link

SCAN = ScanConfig(top_k=3, seq_len=32, max_chunks=8)


class _Outline(HTMLParser):
    """Section titles, image sources, links and the number of shaded token lines of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.titles: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.token_lines = 0
        self._title = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._title = tag == "h2"
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "div" and attrs.get("class") == "tokens":
            self.token_lines += 1

    def handle_data(self, data):
        if self._title:
            self.titles.append(data.strip())
            self._title = False


@pytest.fixture
def report(fitted, tokenizer, forget_corpus, retain_corpus, tmp_path):
    model, guard = fitted
    explanation = explain_guard(
        model, tokenizer, guard, texts={"forget": forget_corpus, "retain": retain_corpus}, scan=SCAN
    )
    trace = trace_latents(model, tokenizer, guard, "what is the cell virus gene protein")
    index = write_explain_report(
        explanation, tmp_path / "explain", trace=trace, nav=[Link("demo", "../demo.html")]
    )
    return guard, explanation, index


def test_report_has_calibration_overview_and_one_section_per_latent(report):
    guard, explanation, index = report
    outline = _Outline(index.read_text())
    ids = [int(i) for i in guard.latents.ids]
    assert outline.titles == [
        "Calibration: how the gate decides",
        "Selected latents",
        *[f"Latent {i}" for i in ids],
    ]
    assert outline.images[0] == "calibration.png"
    scanned = [latent.latent for latent in explanation.latents if latent.scans["forget"].fired]
    assert outline.images[1:] == [
        f"latent-{i}.png" for i in scanned if (index.parent / f"latent-{i}.png").is_file()
    ]
    for src in outline.images:
        assert (index.parent / src).stat().st_size > 1000
    contexts = sum(len(s.contexts) for latent in explanation.latents for s in latent.scans.values())
    assert outline.token_lines == contexts > 0
    assert {"index.html", "trace.html", "../demo.html"} <= set(outline.links)


def test_report_json_holds_the_selection_and_the_trace_the_gate_computed(report):
    guard, explanation, index = report
    data = json.loads((index.parent / "explain.json").read_text())
    assert [latent["latent"] for latent in data["latents"]] == [int(i) for i in guard.latents.ids]
    assert data["tau"] == guard.tau and data["gate_statistic"] == guard.config.gate_statistic
    assert data["latents"][0]["forget_importance"] == guard.provenance.selection.forget_importance[0]
    assert len(data["distributions"]["retain"]) == guard.distributions["retain_rho"].numel()
    trace = json.loads((index.parent / "trace.json").read_text())
    assert trace["flagged"] and trace["rho"] > trace["tau"]
    page = _Outline((index.parent / "trace.html").read_text())
    assert page.titles == ["Decision: flagged"] and page.token_lines == 2


def test_rewriting_the_report_replaces_it_but_never_a_foreign_folder(report, tmp_path):
    from saeguard.errors import SaeguardError

    _, explanation, index = report
    assert write_explain_report(explanation, index.parent) == index
    assert not (index.parent / "trace.html").exists()  # the new report had no prompt
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SaeguardError, match="not an output of this kind"):
        write_explain_report(explanation, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.browser
def test_explain_report_loads_in_headless_chromium(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    _, _, index = report
    shot = tmp_path / "explain.png"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--dump-dom"]
    dom = subprocess.run(
        [*command, f"--screenshot={shot}", "--window-size=1200,1600", index.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    outline = _Outline(dom)
    assert "Calibration: how the gate decides" in outline.titles and "Selected latents" in outline.titles
    assert "calibration.png" in outline.images and outline.token_lines > 0
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1200, 1600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # text, plots and shaded tokens, not a blank page

"""The page model and its renderers: autoescaping, refusals, markdown, counts beside rates."""

from __future__ import annotations

import math

import pytest

from saeguard.errors import SaeguardError
from saeguard.report import (
    Figure,
    Link,
    Page,
    Sample,
    Section,
    Table,
    percent_with_n,
    render_html,
    render_markdown,
    with_n,
    write_page,
)

EVIL = '<script>alert("x")</script>'


def _page(**changes) -> Page:
    fields = {
        "title": f"report on {EVIL}",
        "summary": "What this page holds: one table and one sample.",
        "sections": [
            Section(
                "Results",
                paragraphs=[f"corpus {EVIL}"],
                blocks=[
                    Table(["set", "accuracy"], [[EVIL, with_n(0.75, 4)]], caption="n = items."),
                    Sample(f"prompt {EVIL}", [("guarded", f"answer {EVIL}")], badge="flagged", alert=True),
                ],
            )
        ],
        "nav": [Link("index", "index.html")],
    }
    return Page(**(fields | changes))


def test_user_strings_are_autoescaped_everywhere():
    page = render_html(_page())
    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") == 6  # title, h1, p, td, h3, dd
    assert "0.750 (n=4)" in page and '<a href="index.html">index</a>' in page
    assert '<span class="badge alert">flagged</span>' in page


def test_markdown_holds_the_same_content():
    text = render_markdown(_page())
    assert text.startswith(f"# report on {EVIL}\n")
    assert f"| {EVIL.replace('|', '/')} | 0.750 (n=4) |" in text and "[index](index.html)" in text
    assert "- guarded: answer" in text


def test_a_page_that_does_not_say_what_it_holds_is_refused():
    with pytest.raises(SaeguardError, match="does not say what it holds"):
        render_html(_page(summary="  "))


def test_empty_sections_and_tables_are_refused():
    with pytest.raises(SaeguardError, match="section 'Nothing' .* is empty"):
        render_html(_page(sections=[Section("Nothing")]))
    with pytest.raises(SaeguardError, match="has no rows"):
        render_html(_page(sections=[Section("T", blocks=[Table(["a"], [])])]))
    with pytest.raises(SaeguardError, match="2 cells for 1 columns"):
        render_html(_page(sections=[Section("T", blocks=[Table(["a"], [["1", "2"]])])]))


def test_figures_must_exist_inside_the_report_folder(tmp_path):
    missing = _page(sections=[Section("Plot", blocks=[Figure("plot.png", "a plot")])])
    with pytest.raises(SaeguardError, match="plot.png is missing"):
        write_page(missing, tmp_path / "index.html")
    assert not (tmp_path / "index.html").exists()
    outside = _page(sections=[Section("Plot", blocks=[Figure("../plot.png", "a plot")])])
    with pytest.raises(SaeguardError, match="inside the report folder"):
        render_html(outside)
    (tmp_path / "plot.png").write_bytes(b"\x89PNG")
    path = write_page(missing, tmp_path / "index.html", markdown=tmp_path / "index.md")
    assert '<img src="plot.png" alt="a plot">' in path.read_text()
    assert "![a plot](plot.png)" in (tmp_path / "index.md").read_text()


def test_rates_carry_their_counts():
    assert with_n(0.5, 10) == "0.500 (n=10)"
    assert with_n(0.12345, None, digits=2) == "0.12"
    assert with_n(None, None) == "-" and with_n(math.nan, 0) == "- (n=0)"
    assert percent_with_n(0.25, 8) == "25.0% (n=8)" and percent_with_n(math.nan, 0) == "- (n=0)"


def test_numeric_columns_are_told_apart_from_text():
    table = Table(
        ["config", "acc", "ratio", "ppl", "note"],
        [["a", "0.500 (n=4)", "3 / 4", "2.10e+05", "-"], ["b", "- (n=0)", "-", "12.5%", "failed: OOM"]],
    )
    assert table.numeric() == [False, True, True, True, False]
    page = render_html(_page(sections=[Section("T", blocks=[table])]))
    assert '<td class="num">0.500 (n=4)</td>' in page and "<td>failed: OOM</td>" in page

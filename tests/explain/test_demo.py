"""What the demo gets from explain: fluency beside each generation, the explain report, the nav link."""

from __future__ import annotations

import math

import pytest

from saeguard.explain.demo import add_fluency, explain_demo
from saeguard.explain.latents import ScanConfig
from saeguard.report.demo_page import EXPLAIN_FILE, demo_page

DEGENERATE = "of to of to of to of to"


def _generations():
    return [
        {"topic": "forget", "prompt": "what is the cell", "flagged": True, "rho": 0.9,
         "unguarded": "the cell is a protein", "guarded": DEGENERATE},
        {"topic": "retain", "prompt": "the king of the city", "flagged": False, "rho": 0.0,
         "unguarded": "a river", "guarded": "a river"},
    ]  # fmt: skip


def test_fluency_shows_the_degenerate_generation(fitted, tokenizer):
    model, guard = fitted
    generations = _generations()
    add_fluency(model, tokenizer, guard, generations)
    flagged, passed = (g["fluency"] for g in generations)
    assert flagged["guarded_distinct_2"] == 2 / 7 and flagged["unguarded_distinct_2"] == 1.0
    assert passed["guarded_perplexity"] == pytest.approx(
        passed["unguarded_perplexity"], rel=1e-5
    )  # same text
    perplexities = [
        g["fluency"][f"{side}_perplexity"] for g in generations for side in ("guarded", "unguarded")
    ]
    assert all(math.isfinite(v) and v > 1 for v in perplexities)


def test_demo_page_shows_fluency_and_links_the_explain_report(fitted, tokenizer, forget_corpus, tmp_path):
    model, guard = fitted
    generations = _generations()
    index = explain_demo(
        model,
        tokenizer,
        guard,
        generations,
        tmp_path,
        forget=forget_corpus[:6],
        retain=["the king of the river city"] * 6,
        scan=ScanConfig(top_k=2, seq_len=32, max_chunks=4),
    )
    assert index == tmp_path / EXPLAIN_FILE and index.is_file()
    assert 'href="../demo.html"' in index.read_text()  # and back to the demo
    data = {
        "config": {"forget": "wiki:biology", "forget_mcq": "wiki:biology", "retain_mcq": [], "near_mcq": [],
                   "permutations": "cyclic", "scorer": "cloze"},
        "guard": {"layer": 1, "n_features": 3, "tau": guard.tau, "gate_statistic": "fraction", "clamp": "500",
                  "clamp_value": 500.0, "clamp_scope": "fired"},
        "accuracy": {},
        "text": {},
        "generations": generations,
    }  # fmt: skip
    page = demo_page(data, tmp_path)
    assert EXPLAIN_FILE in [link.href for link in page.nav]
    fields = dict(page.sections[-1].blocks[0].fields)
    assert fields["fluency"].startswith("perplexity under the unguarded model")
    assert "distinct-2 1.00 unguarded, 0.29 guarded" in fields["fluency"]

"""The playground page in headless chromium, and the per-token trace it shades the prompt with."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import urllib.parse

import httpx
import pytest

from .helpers import BENIGN, FLAGGED


def test_the_trace_follows_the_request_guards_in_order(live):
    messages = [{"role": "user", "content": FLAGGED[0]}]
    body = {"model": "tiny", "messages": messages, "guards": ["bio", "lore"]}
    traces = httpx.post(f"{live.url}/saeguard/trace", json=body, timeout=60).json()["guards"]
    chat = httpx.post(f"{live.url}/v1/chat/completions", json={**body, "max_tokens": 1}, timeout=60).json()
    reports = chat["saeguard"]["choices"][0]["guards"]
    assert [t["name"] for t in traces] == ["bio", "lore"]
    for trace, report in zip(traces, reports, strict=True):
        assert trace["rho"] == pytest.approx(report["rho"], abs=1e-12)
        assert trace["flagged"] == report["flagged"]
        counted = [e for e, c in zip(trace["evidence"], trace["counted"], strict=True) if c]
        assert sum(counted) / len(counted) == pytest.approx(trace["rho"], abs=1e-12)
    bio = traces[0]
    assert [t for t, e in zip(bio["tokens"], bio["evidence"], strict=True) if e > 0] == [
        "cell",
        "virus",
        "gene",
        "protein",
    ]


@pytest.mark.browser
@pytest.mark.parametrize(("prompt", "verdict"), [(FLAGGED[0], "FLAGGED (clamped)"), (BENIGN[0], "passed")])
def test_the_playground_round_trips_a_prompt_in_headless_chromium(live, prompt, verdict):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    url = f"{live.url}/?" + urllib.parse.urlencode({"prompt": prompt, "run": "1"})
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=30000",
        "--dump-dom",
    ]
    dom = subprocess.run([*command, url], check=True, capture_output=True, text=True, timeout=120).stdout
    assert '<body data-state="done"' in dom
    assert f'<span id="verdict">{verdict}' in dom
    client = live.client()
    expected = {}
    for name, guards in (("guarded", ["bio", "lore"]), ("unguarded", [])):
        expected[name] = (
            client.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=64,
                extra_body={"guards": guards},
            )
            .choices[0]
            .message.content
        )
        shown = re.search(rf'<pre id="{name}">(.*?)</pre>', dom, re.S)
        assert shown is not None and html.unescape(shown.group(1)) == expected[name]
    shaded = re.findall(r'<div class="tokens" data-guard="bio">(.*?)</div>', dom)[0]
    hot = re.findall(r'data-evidence="1"[^>]*>([^<]+)</span>', shaded)
    assert hot == ([w for w in prompt.split() if w in {"cell", "virus", "gene", "protein"}])
    if "FLAGGED" in verdict:  # a passed prompt may still flip the gate while its answer is generated
        assert expected["guarded"] != expected["unguarded"]

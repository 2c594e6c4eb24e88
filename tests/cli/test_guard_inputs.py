"""`fit`, `inspect`, `generate` and `eval` on inputs from the reliability probe (issue 11 §3-§4).

Before: `inspect` refused a TopK guardrail (it needed the SAE), `generate` had no way to pass
a TopK guardrail's SAE, an all-unknown-token corpus failed only after a statistics pass (a
progress line, then the error), and `eval --limit 0` / `--limit -1` evaluated every item /
silently dropped the last one.
"""

from __future__ import annotations

import json


def test_inspect_reads_a_topk_guardrail_without_its_sae(cli, topk_guard):
    guard, folder, _ = topk_guard
    code, out, err = cli(["inspect", str(folder), "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["architecture"] == "topk" and summary["latent_ids"] == guard.summary()["latent_ids"]


def test_generate_takes_a_topk_guardrails_sae(cli, workspace, topk_guard, error_lines):
    _, folder, _ = topk_guard
    base = ["generate", "--guard", str(folder), "--model", str(workspace / "model"), "--device", "cpu"]
    base += ["--max-new-tokens", "2", "--prompt", "what is the cell"]
    code, _, err = cli(base)
    assert code == 2 and error_lines(err)[-1].startswith("error: ") and "needs its full SAE" in err
    code, out, err = cli([*base, "--sae", str(workspace / "topk_sae")])
    assert code == 0, err
    assert "guarded:" in out and "gate:" in out


def test_a_corpus_of_unknown_tokens_fails_before_the_statistics(cli, fit_args, workspace, error_lines):
    emoji = workspace / "emoji.txt"
    emoji.write_text("\U0001f9ec\U0001f9a0 \u200b zalgo c\u0334e\u0335l\u0336l " * 40, encoding="utf-8")
    args = fit_args(workspace / "out")
    args[args.index("--forget") + 1] = str(emoji)
    code, out, err = cli(args)
    lines = [line for line in error_lines(err) if "Writing model shards" not in line]  # the fixture's saves
    assert code == 2 and out == "" and len(lines) == 1
    assert lines[0].startswith("error: the forget corpus has no document with at least 2 tokens")
    assert not (workspace / "out").exists()


def test_eval_limit_must_be_a_positive_count(cli, workspace, error_lines):
    (workspace / "q.jsonl").write_text(
        json.dumps({"question": "what is the cell", "choices": ["a", "b", "c", "d"], "answer": 0})
    )
    for limit in ("0", "-1"):
        code, _, err = cli(["eval", "--mcq", str(workspace / "q.jsonl"), "--limit", limit, "--no-known"])
        assert code == 2 and error_lines(err)[-1].startswith("error: Invalid value for '--limit'")

"""The probe's summary table (stdout) and ``docs/reliability.md``."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from scripts.reliability.framework import OUTCOMES, Result

#: Modules other engineers are building: a fault whose traceback ends there is listed as open.
OPEN_MODULES = (
    "experiments/",
    "explain/",
    "eval/muse",
    "cli/experiment_commands.py",
    "cli/eval_commands.py",
    "vllm/",
    "distributed.py",
)
#: Cases (area, text in the name) whose code is in those modules: a fault there is open too.
OPEN_CASES = (
    ("cli:experiment", ""),
    ("cli:explain", ""),
    ("cli:eval-muse", ""),
    ("api:state", "explain_guard"),
)

PREAMBLE = """# Reliability probe

`scripts/reliability_probe.py` tries saeguard the way a new user (or a hostile input) would:
{total} cases of bad input, state and security, on tiny random models (a 2-layer Llama with 1,024
positions, a GPT-2 with 256, random SAELens SAEs saved with `save_model`, a few dozen documents),
through the command line (`saeguard ...`: {cli} cases, a few as real `.venv/bin/saeguard`
processes, the rest through the same `main()` in batched processes) and the Python API
({api} cases, in-process). Issue 11 asks for 0 tracebacks, 0 silent wrong results and 0 partial
outputs.

Run it with `.venv/bin/python scripts/reliability_probe.py` (about 7-17 minutes on 2 busy cores;
`--only TEXT` runs the cases whose area or name contains TEXT, `--no-cli` the API side only).

Each case says what its input must give:

- **error**: one line of `SaeguardError` (API), or on the command line exit status 2 with one
  `error: ...` line on stderr (a `note:` line may precede it; some cases also check that the line
  names the problem given); for the server a 4xx in OpenAI's error shape with a one-line message,
  and `/health` still ok after it;
- **usage**: a command-line parser error, exit status 2, one line;
- **success**: no error, and an asserted value (the same tau, the same decisions, the same text as a
  recomputation without KV cache, the server's rho equal to the API's, ...); a command's stderr must
  hold no library warning;
- **either**: a one-line error or a success passing its check (a folder of the user's files as
  output: refused, or written beside them with the files kept; an OpenAI field the server cannot
  honour: refused, or honoured).

What happened is one of: **OK**; **TRACEBACK** (a raw exception, or a traceback on stderr);
**SILENT-WRONG** (success where an error was due, or a wrong value); **PARTIAL-OUTPUT** (a failed
call left files behind); **REFUSED** (an error where success was due); **MULTI-LINE** (an error of
more than one line); **LATE-CHECK** (a command given bad input still working after 150 s: it works
before it checks).

## What the probe covers

- **Command line**: parser errors (bad numbers, unknown commands and choices, missing options);
  every fit setting out of range; missing, empty, binary, pickle, non-UTF-8 and malformed corpora;
  outputs that are files, under files, on a read-only mount, existing non-guard folders or guards
  without `--force`; lengths beyond the model's positions; broken SAE folders (zero bytes, pickle,
  bad `cfg.json`, wrong width, another layer); broken model folders; devices that are not there;
  corrupt guardrails for `inspect`; bad MCQ files and `--limit`s for `eval`; successful fits,
  forced replacement, the lowered default length, `generate` with empty and rich-markup prompts
  and with a TopK guard's `--sae`; corpora that cannot make a working gate (the same text on both
  sides, the forget documents inside the retain corpus, tiny forget or retain corpora: a guard
  and a `WARNING:` line saying what to do); and bad input to the commands others are building (`explain`,
  `attack`, `experiment`, `serve`, `train-sae`), where a fault is listed under "Open".
- **API**: wrong types for every argument of `Guardrail.fit`, `load`, `save`, `generate`,
  `attach`/`attached`; `FitConfig`, `Clamp` and preset misuse; malformed, empty, huge, unicode and
  binary corpora and MCQ files; corrupt and hostile artifacts (truncated or pickle tensors, a 2**60
  header, NaN/inf, wrong shapes and dtypes, JSON 100,000 levels deep, 20 MB of JSON, symlinks to
  `/etc/passwd` and `/dev/zero`, a TopK guard recording a path traversal or a hub release; pickle
  payloads must never run); file modes under umask 077; every `generate()` strategy against the same
  call with `use_cache=False`; double attach, detach twice, one hook on two models, nested
  `attached`, exceptions inside `attached`; six concurrent `generate` threads against their serial
  runs; chat templates that refuse system turns, trim, drop or rewrite content; tokenizers without
  pad/eos/bos or with pad = eos; models on the meta device, in bf16, or not language models; the
  lm-eval adapter's batching.
- **Server** (`create_app` served by uvicorn on a free loopback port): bad requests (NaN, infinite,
  float, boolean and 2**64 numbers, seeds beyond torch's range, nulls, image parts, unknown roles,
  lone surrogates, bodies 100,000 levels deep, empty, `null`, over the size limit or not JSON,
  empty and dangling model aliases, repeated guards, OpenAI fields the server cannot honour, path
  traversal, other methods, traces over the positions), each followed by a health check; accepted
  variants (integer temperatures, text parts, logprobs, duplicate keys, token-id prompts, streams);
  the server's rho and `on_flag: refuse` against the API's gate, 8 concurrent requests against their
  serial answers; API keys (missing, in the query string, another scheme, non-ASCII on either side).
- **State**: a guard fitted on the 32-wide, 2-layer Llama meeting a 48-wide or a 1-layer model at
  every entry (`Guardrail.load`, `generate`, `attach`, `attached`, `evaluate_mcq`, `guarded_lm`,
  `explain_guard`, `create_app`, and `generate`, `eval`, `explain`, `attack`, `serve`,
  `eval --muse` on the command line); Qwen2 and GPT-2 of the same width (refused by the strict
  check, accepted with `--no-strict`); a TopK guard without its SAE wherever its gate would run.
- **More commands**: `explain`, `attack`, `experiment`, `eval --muse`, `serve` and `train-sae` with
  bad options, missing, corrupt, binary and malformed files, outputs that are files, under files or
  folders of the user's files, ports in use and hosts that do not resolve; one real
  `saeguard serve` process (a bad and a good request, then Ctrl-C).
"""


FOUND = """## What the first run found, and the kinds fixed

The first run of this probe (this round) gave, on the API, 42 tracebacks, 16 silent wrong results
and 3 wrong refusals out of 296 cases; on the command line 1 refusal (`inspect` of a TopK guard),
1 error printed after a statistics pass, and for `train-sae` (probed as a command others build)
1 traceback and 2 commands that worked for minutes before failing; 0 partial outputs and no
pickle payload ever ran. Five of those were the probe's own wrong expectations, corrected: a
refusal of `n_features` above the candidate count is right; the 1 MB template case, the larger
vocabulary case and the threads case did not feed the input meant; assisted decoding cannot run
without a cache, so it is compared with greedy decoding. Every other fault was fixed by kind, each
with regression tests (`tests/hf/test_model_checks.py`, `tests/test_io_checks.py`,
`tests/hf/test_corpus_rows.py`, `tests/core/test_fit_arguments.py`,
`tests/core/test_artifact_trust.py`, `tests/core/test_guardrail_arguments.py`,
`tests/eval/test_input_checks.py`, `tests/cli/test_guard_inputs.py`, `tests/cli/test_train_inputs.py`):

1. **Not a language model** (None, a string, a tokenizer, `nn.Linear`, weights on the meta device)
   given to `fit`, `load`, `attach` or `generate`: `hf.layers.check_language_model`, before anything
   is touched (a meta-device fit used to move the caller's SAE to meta first).
2. **Not a tokenizer** (`"tok"`, a number): `hf.corpus.check_tokenizer`.
3. **Token ids the model does not embed** (a tokenizer with more tokens than the embedding table):
   `hf.layers.check_token_ids` in `generate`, in every statistics/calibration forward
   (`residual_at`) and in lm-eval requests; no more `IndexError`.
4. **Lengths beyond the model's positions**: `prompt_max_tokens` and `calibration_long_tokens`
   at fit time, every statistics forward, MCQ prompts and options, lm-eval `max_length`.
5. **Arguments of the wrong type**: `config="paper"` or a dict, `statistics_cache=123` or a file,
   `Guardrail.load(None)`, `save(123)`: one line naming the argument.
6. **Outputs that cannot be written** (under a file, on a read-only mount): `io.staged_folder` and
   `write_bytes_atomic` turn the OS error into one line, with nothing left behind.
7. **JSON**: one reader (`io.parse_json`) for artifacts, JSONL corpora and MCQ files: nesting
   beyond Python's recursion limit and NaN/Infinity are one-line errors; a UTF-8 byte-order mark is
   accepted; a JSONL row whose text is a number is an error naming its line (it was dropped in
   silence), a `null` or list row too (it was a `TypeError`).
8. **Artifacts that contradict themselves**: special ids beyond any vocabulary, a provenance
   selection whose latent ids or per-latent lists disagree with the tensors, negative corpus
   counts, NaN calibration rho (tau became NaN on retune), float16 tensors (crashed at generate
   time; now read as float32).
9. **`generate` options**: `input_ids`/`attention_mask` in the keywords are refused; any error
   `model.generate` raises before its first forward (unknown options, `num_beams=0`, greedy with
   several return sequences, contrastive and group beam search that need remote code, a bad
   streamer, assisted decoding of a batch) is one line; `return_dict_in_generate` works.
10. **One guard applied twice**: attaching the same guard twice, nesting `attached`, or calling
    `guard.generate` inside `guard.attached` gated and clamped twice in silence; now refused. A
    gate with NaN tau, a non-positive clamp or a negative layer is refused.
11. **The same weights in bf16** were refused by the strict check as "other weights": the artifact
    now records the fit-time dtype and a few weight values, and the same weights in another dtype
    pass (other weights are still refused).
12. **TopK guards**: `inspect` reads one without its SAE (`Guardrail.load(..., need_sae=False)`; its
    gate refuses to run), and `generate --sae` passes the SAE.
13. **A corpus the tokenizer reads as unknown tokens only** is refused before the statistics pass.
14. **MCQ input**: empty options, binary files, `limit` of 0 or below (API and `eval --limit`), items
    given as a path string.
15. **`train-sae`**: the layer, sizes and output are checked before the model loads or training
    starts.

A second round extended the probe to the server, the state cases and the commands above (about
200 new cases). It found, and these kinds were fixed with regression tests (`tests/cli/test_quiet.py`,
`tests/test_io_checks.py`, `tests/hf/test_text_checks.py`, `tests/eval/test_input_checks.py`,
`tests/eval/test_lm_eval_adapter.py`, `tests/core/test_artifact_trust.py`,
`tests/server/test_app_checks.py`, `tests/server/test_bad_requests.py`,
`tests/server/test_serve_command.py`, `tests/attacks/test_cli.py`, `tests/attacks/test_runner.py`):

16. **Other libraries' warnings on a command's stderr** (a TransformerLens `DeprecationWarning`
    printed by `generate --sae`): the entry point routes warnings through `cli/quiet.py`, which
    shows saeguard's own (`CalibrationWarning`, settings an artifact holds that this version
    ignores) as one `WARNING:` line and drops library warnings and log lines (`-W` or
    `PYTHONWARNINGS`, and `TRANSFORMERS_VERBOSITY` and its kin, still win).
17. **Text that is not Unicode** (an unpaired surrogate, e.g. JSON's `"\\ud800"`): the tokenizer
    raised `TypeError` from `generate`, `fit`, JSONL corpora, MCQ items and the server's chat route
    (a 500). `io.check_unicode` now checks every JSON file read by `io.parse_json`, corpus lists,
    prompts, conversations and MCQ items: one line naming the text and the position.
18. **The server made apps no request could use**: `create_app` accepted guards of another width or
    layer count, a TopK guard without its SAE, values that are not guards, guard names holding `+`
    or named `none`, `default_guards` naming no guard, a model id holding `+`; now refused when
    the app is made. `model: ""` and `"id+"` were served as the default model (now 404 like any
    unknown id); a non-ASCII API key, sent or configured, gave a 500 (`hmac.compare_digest` on
    str; now compared as bytes); `logit_bias`, `response_format` other than text, penalties,
    `functions` and `best_of` were ignored in silence (now refused, as `tools` and `n` were); a
    seed beyond torch's range is a 400; `/saeguard/trace` traced prompts beyond the model's
    positions (now `context_length_exceeded`, as the chat route).
19. **Guards that cannot run, accepted until the first forward**: `attach` of a TopK guard read
    without its SAE (it failed inside the model's forward), `guarded_lm` with a guard of another
    model (it failed at lm-eval's first request): both refused at once.
20. **`attack` options**: `--tokens 0` (it ran for minutes), negative `--tokens` and
    `--padding-tokens`, `--limit 0` (all questions, in silence) ran; a binary `--prompts` file was a
    `UnicodeDecodeError` traceback. `AttackGrid` checks its lengths, the limits take `min=1`, and
    prompt files are read as the other text files are (UTF-8 with a byte-order mark, `parse_json`).
21. **`serve` on a port in use or a host that does not resolve** exited 1 with uvicorn's log lines
    after the model loaded: the address is now bound once and released before anything loads.

Four of the second round's first results were the probe's own mistakes, corrected: a seed is not
used by greedy decoding (the case now samples); a trace of 300 tokens fits the 1,024-position
model (the case now sends 1,100); `Workspace.fresh` handed the same output path to cases built
before any ran (experiment cases shared a folder); the Qwen2 `--no-strict` check read the
per-step gate records as per-prompt ones.

A third round fixed what the second left open, by kind, with regression tests
(`tests/experiments/test_settings.py`, `tests/experiments/test_cli.py`, `tests/explain/test_guard.py`,
`tests/explain/test_trace.py`, `tests/cli/test_guard_sae_option.py`, `tests/eval/test_items.py`,
`tests/cli/test_eval_commands.py`, `tests/attacks/test_report.py`, `tests/attacks/test_cli.py`,
`tests/core/test_fit_report.py`, `tests/core/test_row_decisions.py`), and added cases for each:

22. **Experiment settings of the wrong type** (`{"utility_target": "high"}` ran; the report then
    failed): `settings_from_dict` checks every value against its field's type hint, element by
    element in lists and dicts, as a finite number, and against `min`/`max` metadata
    (`utility_target` in [0, 1], `eval.batch_size` and `eval.mcq_limit` at least 1), one line
    naming the setting.
23. **An SAE of another width than the model** was recorded once per experiment point:
    `core.sae.check_sae_width` fails up front, naming both widths, in `experiments.common.Setup.open`
    (API) and before any work in `experiment` and `compare` (`cli.options.check_sae`).
24. **`explain_guard` and `trace_prompt` did not check the model**: both run
    `Guardrail.check_model` first; `trace_prompt` checks the prompt against the model's positions
    and says to shorten the prompt; `explain --prompt` traces before the scans.
25. **TopK guards on `explain`, `serve`, `eval` (`--mcq` and `--muse`) and `attack`**: one shared
    `--sae` option (`cli.options.GuardSae`), as `generate` had.
26. **`eval --mcq missing.jsonl` said "unknown MCQ set"**: one resolver (`eval.items.mcq_set`, used
    by `eval`, `attack`, `sweep` and `compare`) reads a spec that looks like a path (a suffix or a
    `/`) as a file ("not found"), and lists the built-in names for a bare unknown one.
27. **`attack --no-known` said "known"; `attack --prompts` results were not shown**: the table,
    page and JSON say which questions were attacked, and the prompts get columns with their counts.
28. **A fit whose corpora the gate cannot tell apart** (the same text on both sides, the forget
    documents inside the retain corpus) wrote a guard that never fires, with at most a "too few
    inputs" warning: the `CalibrationWarning` now names the problem and says to use a retain corpus
    without the forget topic; a tiny forget corpus says to add forget text, a tiny retain corpus
    retain text.
29. **`row_decisions` under beam search** gave one decision per beam, which the README zipped with
    the prompts: `row_decisions(records, len(prompts))` gives one per prompt, and the README uses it.
"""

OPEN_NOTES = """Weak spots the cases above accept:

- **Seeds under concurrency**: `seed` reproduces a sampled answer with `--workers 1` only (torch's
  generator is shared by the worker threads; documented in docs/serving.md, not probed).
- **Corpus warnings are heuristics**: the fit warns on fewer than 300 forget tokens or 8 forget
  calibration inputs, on 10% or more of the forget documents found verbatim in the retain corpus,
  on no selected latent 2x as important on forget as on retain text, and on a dynamic gate that
  flags under 10 points more of the forget than of the retain calibration inputs
  (`core/fit_report.py`). A retain corpus that shares the topic in other words (paraphrases, not
  copies) is caught only through the last two.
- **`serve --sae`** passes one SAE to every `--guard`: two TopK guards fitted with different SAEs
  cannot be served together from the command line (`create_app` takes them from the API)."""


def area_table(results: list[Result]) -> list[str]:
    """Markdown rows: per area, the count of each outcome."""
    areas = sorted({r.area for r in results})
    lines = ["| area | cases | " + " | ".join(OUTCOMES) + " |", "|---|---|" + "---|" * len(OUTCOMES)]
    for area in [*areas, "all"]:
        chosen = [r for r in results if area in ("all", r.area)]
        counts = Counter(r.outcome for r in chosen)
        name = f"**{area}**" if area == "all" else area
        lines.append(
            f"| {name} | {len(chosen)} | " + " | ".join(str(counts.get(o, 0)) for o in OUTCOMES) + " |"
        )
    return lines


def expect_table(results: list[Result]) -> list[str]:
    """Markdown rows: per expected kind, the count of each outcome."""
    lines = ["| expected | cases | " + " | ".join(OUTCOMES) + " |", "|---|---|" + "---|" * len(OUTCOMES)]
    for kind in ("error", "usage", "success", "either"):
        chosen = [r for r in results if r.expect == kind]
        counts = Counter(r.outcome for r in chosen)
        lines.append(
            f"| {kind} | {len(chosen)} | " + " | ".join(str(counts.get(o, 0)) for o in OUTCOMES) + " |"
        )
    return lines


def is_open(result: Result) -> bool:
    """A fault in a module others are building: by its innermost saeguard frame, or by its case."""
    if not result.fault:
        return False
    where = re.search(r"\[([\w./]+):\d+\]$", result.message)
    if where is not None and any(m.rstrip("/") in where.group(1) for m in OPEN_MODULES):
        return True
    return any(result.area == area and text in result.name for area, text in OPEN_CASES)


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary(results: list[Result]) -> str:
    """The table printed at the end of a run, and the faults."""
    lines = area_table(results) + [""] + expect_table(results)
    faults = [r for r in results if r.fault]
    if faults:
        lines += ["", "faults:"]
        lines += [f"  {r.outcome:<14} {r.area} / {r.name}: {_cell(r.message, 200)}" for r in faults]
    return "\n".join(lines)


def write_markdown(results: list[Result], path: Path, seconds: float) -> None:
    cli = sum(r.area.startswith("cli") for r in results)
    text = PREAMBLE.format(total=len(results), cli=cli, api=len(results) - cli)
    faults = [r for r in results if r.fault]
    open_faults = [r for r in faults if is_open(r)]
    lines = [
        text,
        f"## Result (run took {seconds / 60:.1f} min)",
        "",
        *area_table(results),
        "",
        *expect_table(results),
        "",
    ]
    lines += ["## Open", ""]
    if open_faults:
        lines += ["Faults in modules others are building (not fixed here): input and the last line.", ""]
        lines += [f"- `{r.area}` {r.name}: {_cell(r.given)} → {_cell(r.message)}" for r in open_faults]
    else:
        lines.append(f"None: no case reached {', '.join(OPEN_MODULES)} with a fault.")
    lines += ["", OPEN_NOTES, "", FOUND]
    rest = [r for r in faults if not is_open(r)]
    if rest:
        lines += ["", "## Faults", ""]
        lines += [
            f"- **{r.outcome}** `{r.area}` {r.name}: {_cell(r.given)} → {_cell(r.message)}" for r in rest
        ]
    lines += [
        "",
        "## Every case",
        "",
        "| area | case | input | expected | outcome | what it says |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.area} | {_cell(r.name, 60)} | {_cell(r.given, 120)} | {r.expect} | {r.outcome} | "
            f"{_cell(r.message)} |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

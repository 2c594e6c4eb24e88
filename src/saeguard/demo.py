"""`saeguard demo`: DSG on a real model and real text, offline, on a CPU.

Fits a biology guardrail on the embedded SmolLM2-135M-Instruct with its
cached SAE, then measures before/after with the evaluation harness: known-item
MCQ accuracy on forget, retain and near-domain topics, held-out perplexity,
gate firing rates and a few generations. Everything lands in one report folder.
"""

from __future__ import annotations

import html
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from saeguard.defaults import DEFAULT_LAYER, DEFAULT_WIDTH, ensure_default_sae
from saeguard.eval.known import KnownConfig, known_items
from saeguard.eval.mcq import McqConfig, evaluate_mcq
from saeguard.eval.text import TextConfig, text_metrics
from saeguard.io import write_json

FORGET_QUESTIONS = (
    "What is the function of mitochondria in a cell?",
    "How do vaccines train the immune system?",
    "What does DNA polymerase do during replication?",
)
RETAIN_QUESTIONS = (
    "What is the capital of France?",
    "Who wrote the novel Pride and Prejudice?",
    "What causes the seasons on Earth?",
)


@dataclass
class DemoConfig:
    """The demo's defaults: biology is forgotten, everything else is kept."""

    layer: int = DEFAULT_LAYER
    width: int = DEFAULT_WIDTH
    sae: str | None = None  # an SAELens folder; default: the cached default SAE (trained once)
    forget: str = "wiki:biology"
    retain: tuple[str, ...] = ("wiki:not-biology", "austen", "wordnet")
    retain_documents_per_source: int = 1500
    n_features: int = 20
    ratio_percentile: float = 95.0
    gate_percentile: float = 95.0
    # Measured on the demo's known items (docs/demo-results.md): the paper's statistic and
    # clamp scope reach forget 41-44%; the activation statistic + input scope reach chance.
    clamp: str = "5x"
    gate_statistic: str = "activation"
    clamp_scope: str = "input"
    seq_len: int = 256
    max_forget_chunks: int = 400
    max_retain_chunks: int = 800
    forget_mcq: str = "wiki:biology"
    retain_mcq: tuple[str, ...] = ("wiki:geography", "wiki:history", "wiki:arts")
    near_mcq: tuple[str, ...] = ("wiki:physical-sciences", "wiki:technology")
    forget_items: int = 150
    items_per_other_set: int = 60
    permutations: str = "cyclic"
    scorer: str = "cloze"
    max_new_tokens: int = 40
    text_chunks: int = 16
    text_prompts: int = 200
    seed: int = 0


@dataclass
class DemoResult:
    config: DemoConfig
    guard: dict[str, Any]
    accuracy: dict[str, dict[str, float | int]]
    text: dict[str, Any]
    generations: list[dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)
    kind: str = "saeguard-demo"
    version: int = 1


def retain_documents(config: DemoConfig, split: str) -> list[str]:
    """General text: other Wikipedia topics plus a sample of Austen and WordNet, shuffled."""
    from saeguard.data.corpora import load_corpus

    rng = random.Random(config.seed)
    docs: list[str] = []
    for name in config.retain:
        source = load_corpus(name, split)
        if name.startswith("wiki"):
            docs.extend(source)
        else:
            docs.extend(rng.sample(source, min(len(source), config.retain_documents_per_source)))
    rng.shuffle(docs)
    return docs


def fit_demo_guard(
    model, tokenizer, sae: str, config: DemoConfig, *, show_progress: bool = True, cache: Path | None = None
):
    """The demo's guardrail: statistics are cached, so refits with other settings are cheap.

    With ``cache`` (a folder) the fitted guardrail itself is cached there, keyed by the model,
    the SAE, the documents and every setting, so a rerun of the demo skips calibration too.
    """
    from saeguard.core.guardrail import Guardrail
    from saeguard.data.corpora import load_corpus
    from saeguard.hf.fingerprint import model_fingerprint
    from saeguard.io import cache_dir, json_fingerprint, text_fingerprint

    forget, retain = load_corpus(config.forget, "train"), retain_documents(config, "train")
    cached = None
    if cache is not None:
        sae_cfg = Path(sae) / "cfg.json"
        key = json_fingerprint(
            {
                "model": model_fingerprint(model, config.layer),
                "sae": sae_cfg.read_text() if sae_cfg.is_file() else str(sae),
                "sae_weights": _file_stamp(Path(sae) / "sae_weights.safetensors"),
                "forget": text_fingerprint(forget),
                "retain": text_fingerprint(retain),
                "config": asdict(config),
            }
        )
        cached = Path(cache) / f"demo-{key}"
        if (cached / "guardrail.json").is_file():
            return Guardrail.load(cached, model)
    guard = Guardrail.fit(
        model,
        tokenizer,
        sae,
        forget=forget,
        retain=retain,
        layer=config.layer,
        n_features=config.n_features,
        ratio_percentile=config.ratio_percentile,
        gate_percentile=config.gate_percentile,
        clamp=config.clamp,
        gate_statistic=config.gate_statistic,
        clamp_scope=config.clamp_scope,
        seq_len=config.seq_len,
        max_forget_chunks=config.max_forget_chunks,
        max_retain_chunks=config.max_retain_chunks,
        seed=config.seed,
        statistics_cache=cache_dir() / "stats",
        show_progress=show_progress,
    )
    if cached is not None:
        guard.save(cached)
    return guard


def _file_stamp(path: Path) -> str:
    stat = path.stat() if path.is_file() else None
    return f"{stat.st_size}-{stat.st_mtime_ns}" if stat else ""


def run_demo(
    config: DemoConfig,
    output: Path,
    *,
    show_progress: bool = True,
    console: Console | None = None,
    guard_cache: Path | None = None,
):
    """The demo end to end; ``guard_cache`` defaults to the user cache folder's ``guards``."""
    from saeguard.data.corpora import load_corpus
    from saeguard.hf.models import load_model
    from saeguard.io import cache_dir

    console = console or Console()
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    model, tokenizer = load_model("default")
    seconds["load_model"] = time.perf_counter() - started

    began = time.perf_counter()
    sae_dir = config.sae or ensure_default_sae(config.layer, config.width, show_progress=show_progress)
    seconds["sae"] = time.perf_counter() - began

    began = time.perf_counter()
    guard = fit_demo_guard(
        model,
        tokenizer,
        str(sae_dir),
        config,
        show_progress=show_progress,
        cache=guard_cache or cache_dir() / "guards",
    )
    guard.save(output / "guardrail")
    seconds["fit"] = time.perf_counter() - began

    began = time.perf_counter()
    accuracy = mcq_tradeoff(model, tokenizer, guard, config, show_progress=show_progress)
    seconds["mcq"] = time.perf_counter() - began

    began = time.perf_counter()
    text = text_metrics(
        model,
        tokenizer,
        guard,
        forget=load_corpus(config.forget, "heldout"),
        retain=retain_documents(config, "heldout"),
        near={name.split(":")[1]: load_corpus(name, "heldout") for name in config.near_mcq},
        config=TextConfig(max_chunks=config.text_chunks, prompt_limit=config.text_prompts),
        show_progress=show_progress,
    )
    seconds["text"] = time.perf_counter() - began

    began = time.perf_counter()
    prompts = list(FORGET_QUESTIONS + RETAIN_QUESTIONS)
    guarded_texts, records = guard.generate(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens)
    plain_texts, _ = guard.generate(
        model, tokenizer, prompts, max_new_tokens=config.max_new_tokens, guarded=False
    )
    generations = [
        {
            "topic": "forget" if i < len(FORGET_QUESTIONS) else "retain",
            "prompt": prompt,
            "flagged": bool(records[0].flagged[i]),
            "rho": float(records[0].rho[i]),
            "unguarded": plain_texts[i],
            "guarded": guarded_texts[i],
        }
        for i, prompt in enumerate(prompts)
    ]
    seconds["generate"] = time.perf_counter() - began
    seconds["total"] = time.perf_counter() - started

    result = DemoResult(
        config=config,
        guard=guard.summary(),
        accuracy=accuracy,
        text=asdict(text),
        generations=generations,
        seconds=seconds,
    )
    write_demo_report(result, guard, text, output)
    print_demo(result, console)
    return result


def mcq_tradeoff(model, tokenizer, guard, config: DemoConfig, *, show_progress: bool = True):
    """Known-item accuracy with and without ``guard`` on forget, retain and near-domain sets."""
    from saeguard.data.mcq import build_mcq
    from saeguard.eval.items import as_items

    mcq = McqConfig(scorer=config.scorer)  # type: ignore[arg-type]
    known_config = KnownConfig(mcq=mcq, permutations=config.permutations)  # type: ignore[arg-type]
    groups = {"forget": [config.forget_mcq], "retain": list(config.retain_mcq), "near": list(config.near_mcq)}
    accuracy: dict[str, dict[str, float | int]] = {}
    for group, names in groups.items():
        limit = config.forget_items if group == "forget" else config.items_per_other_set
        base_correct = guarded_correct = flagged = total_known = total = 0
        for name in names:
            items = as_items(build_mcq(name, "heldout", limit=limit), source=name)
            known = known_items(
                model, tokenizer, items, config=known_config, dataset=name, show_progress=show_progress
            )
            total += len(items)
            if not known.ids:
                continue
            chosen = known.select(items)
            base = evaluate_mcq(model, tokenizer, chosen, config=mcq, dataset=name, show_progress=False)
            guarded = evaluate_mcq(
                model,
                tokenizer,
                chosen,
                guard=guard,
                config=mcq,
                dataset=name,
                base=base,
                show_progress=False,
            )
            total_known += len(chosen)
            base_correct += base.correct
            guarded_correct += guarded.correct
            flagged += sum(bool(p.flagged) for p in guarded.predictions)
        accuracy[group] = {
            "items": total,
            "known": total_known,
            "base_accuracy": base_correct / total_known if total_known else float("nan"),
            "guarded_accuracy": guarded_correct / total_known if total_known else float("nan"),
            "flagged_fraction": flagged / total_known if total_known else float("nan"),
        }
    return accuracy


def print_demo(result: DemoResult, console: Console) -> None:
    table = Table(title="DSG demo: known-item MCQ accuracy before / after the guard")
    for column in ("topic", "items", "known", "unguarded", "guarded", "relative", "gate fired"):
        table.add_column(column, justify="right" if column != "topic" else "left")
    for group, row in result.accuracy.items():
        base, guarded = row["base_accuracy"], row["guarded_accuracy"]
        relative = guarded / base if base else float("nan")
        table.add_row(
            group,
            str(row["items"]),
            str(row["known"]),
            f"{100 * base:.1f}%",
            f"{100 * guarded:.1f}%",
            f"{100 * relative:.1f}%",
            f"{100 * row['flagged_fraction']:.1f}%",
        )
    console.print(table)
    loss = result.text.get("loss", {})
    for name, metrics in loss.items():
        console.print(
            f"perplexity {name}: {metrics['base_perplexity']:.2f} -> {metrics['guarded_perplexity']:.2f}"
        )
    for name, metrics in result.text.get("firing", {}).items():
        console.print(f"gate fires on held-out {name} prompts: {100 * metrics['flagged_fraction']:.1f}%")
    for item in result.generations:
        state = "FLAGGED" if item["flagged"] else "passed"
        console.rule(f"[{item['topic']}] {item['prompt']}  ({state}, rho={item['rho']:.2f})")
        console.print(f"[bold]unguarded:[/bold] {item['unguarded'].strip()}")
        console.print(f"[bold]guarded:  [/bold] {item['guarded'].strip()}")
    console.print(f"timings (s): { {k: round(v, 1) for k, v in result.seconds.items()} }")


def write_demo_report(result: DemoResult, guard, text, output: Path) -> Path:
    from saeguard.io import write_text_atomic
    from saeguard.runs.sweep_report import write_report

    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "demo.json", result)
    write_report(  # plots the guard's calibration rho and the held-out firing rho
        output,
        tau=guard.tau,
        text=text,
        guard=guard,
        title="saeguard demo: forgetting biology in SmolLM2-135M-Instruct",
    )
    write_text_atomic(output / "demo.html", _demo_html(result))
    return output


def _demo_html(result: DemoResult) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(group)}</td><td>{row['items']}</td><td>{row['known']}</td>"
        f"<td>{100 * row['base_accuracy']:.1f}%</td><td>{100 * row['guarded_accuracy']:.1f}%</td>"
        f"<td>{100 * row['flagged_fraction']:.1f}%</td></tr>"
        for group, row in result.accuracy.items()
    )
    gens = "".join(
        f"<h3>[{esc(g['topic'])}] {esc(g['prompt'])} "
        f"({'flagged' if g['flagged'] else 'passed'}, rho={g['rho']:.2f})</h3>"
        f"<p><b>unguarded:</b> {esc(g['unguarded'])}</p><p><b>guarded:</b> {esc(g['guarded'])}</p>"
        for g in result.generations
    )
    guard = result.guard
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>saeguard demo</title></head><body>"
        "<h1>saeguard demo: forgetting biology in SmolLM2-135M-Instruct</h1>"
        f"<p>layer {guard['layer']}, {guard['n_features']} latents, tau={guard['tau']:.3f} "
        f"({guard['gate_statistic']} statistic), clamp={guard['clamp']:.3g} ({guard['clamp_scope']} scope). "
        "Accuracy is on known items (answered correctly by the "
        "unguarded model under every option order checked).</p>"
        "<table border=1 cellpadding=4><tr><th>topic</th><th>items</th><th>known</th>"
        f"<th>unguarded</th><th>guarded</th><th>gate fired</th></tr>{rows}</table>"
        "<p><img src='rho.png' width=640></p>"
        "<p>Full evaluation report: <a href='index.html'>index.html</a></p>"
        f"<h2>Generations</h2>{gens}</body></html>"
    )

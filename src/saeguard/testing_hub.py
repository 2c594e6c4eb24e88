"""A local Hugging Face cache holding tiny stand-ins for the paper's hub resources (issue 11 §7).

The README's GPU recipe reads gemma-2-2b-it, a Gemma Scope SAE through SAELens,
WMDP/MMLU and wikitext through ``datasets``, and lm-eval tasks over those
datasets. :func:`build_hub_cache` writes tiny random versions of all of them
into one folder laid out as ``huggingface_hub`` and ``datasets`` lay out their
caches after an online run, so the real loaders run unchanged with
``HF_HUB_OFFLINE=1``::

    <root>/hub/models--google--gemma-2-2b-it/{blobs/, refs/main, snapshots/<commit>/config.json, ...}
    <root>/hub/models--google--gemma-scope-2b-pt-res/.../layer_3/width_16k/average_l0_142/params.npz
    <root>/hub/models--saeguard-testing--gemma-scope-2b-pt-res/.../<sae_id>/{cfg.json, sae_weights...}
    <root>/hub/datasets--cais--wmdp/.../{README.md, wmdp-bio/test-00000-of-00001.parquet}
    <root>/datasets/cais___wmdp/wmdp-bio/0.0.0/<commit>/{dataset_info.json, wmdp-test.arrow}

The last line is what ``datasets.load_dataset`` reads offline (it never looks
in the hub cache then). Both libraries read their settings once, at import:
export :meth:`HubCache.environ` *before* Python starts (a subprocess) or before
importing them. Gemma Scope's SAELens converter derives ``d_in``/``d_sae`` from
the release name (2304/16384); :func:`tiny_gemma_scope` overrides them for the
duration of a ``with`` block so the real release name loads the tiny SAE.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import pre_tokenizers, processors
from transformers import Gemma2ForCausalLM, PreTrainedTokenizerFast

from saeguard.io import staged_folder, write_text_atomic
from saeguard.testing import (
    COMMON_WORDS,
    EVAL_VOCAB,
    FORGET_WORDS,
    PLANTED_LATENT,
    RETAIN_WORDS,
    corpus,
    fast_tokenizer,
    plant_forget_direction,
    random_sae,
    word_level,
)
from saeguard.testing import tiny_gemma2 as gemma2_decoder
from saeguard.testing.hf_cache import add_dataset, folder_files, quiet_progress, write_snapshot

__all__ = [  # the cache layout writers are saeguard.testing.hf_cache, re-exported for this module's callers
    "HubCache",
    "add_dataset",
    "build_hub_cache",
    "folder_files",
    "gemma_scope_files",
    "gemma_tokenizer",
    "mcq_rows",
    "planted_pair",
    "saelens_files",
    "tiny_gemma2",
    "tiny_gemma_scope",
    "write_snapshot",
]

MODEL_REPO = "google/gemma-2-2b-it"
GEMMA_SCOPE_RELEASE = "gemma-scope-2b-pt-res"  # registered in SAELens's pretrained_saes.yaml
GEMMA_SCOPE_REPO = "google/gemma-scope-2b-pt-res"  # that release's repo_id
SAE_ID = "layer_3/width_16k/average_l0_142"  # the README's id
LAYER = 3
#: The same SAE in SAELens's own format; an unregistered ``org/name`` release is read as a repo id.
SAELENS_REPO = "saeguard-testing/gemma-scope-2b-pt-res"
#: 5 blocks: the clamp at block 3 (the README's layer) needs a later block to reach the logits.
D_MODEL, D_SAE, N_LAYERS = 32, 64, 5
WMDP = ("cais/wmdp", "wmdp-bio")
MMLU = ("cais/mmlu", "college_biology")
WIKITEXT = ("Salesforce/wikitext", "wikitext-2-raw-v1")
_TURN_START, _TURN_END = "<start_of_turn>", "<end_of_turn>"
#: EVAL_VOCAB with Gemma's turn markers and role name at the same ids (so
#: ``plant_forget_direction`` finds the forget words), plus "college" for MMLU's subject.
GEMMA_VOCAB = [
    {"<|im_start|>": _TURN_START, "<|im_end|>": _TURN_END, "assistant": "model"}.get(t, t)
    for t in EVAL_VOCAB[:-1]
] + ["college", "<unk>"]
#: Gemma-2-style template: BOS, no system turn, ``| trim`` on every message, "model" turns.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + m['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class HubCache:
    """Paths of a cache built by :func:`build_hub_cache` (repo ids and configs: the module constants)."""

    root: Path  # HF_HOME
    forget_file: Path  # a local .jsonl forget corpus (the README's bio_forget.jsonl)
    task_dir: Path  # a custom lm-eval task (saeguard_local_wmdp) over a local parquet file

    @property
    def hub_cache(self) -> Path:
        """``HF_HUB_CACHE``: ``models--*`` and ``datasets--*`` repos."""
        return self.root / "hub"

    @property
    def datasets_cache(self) -> Path:
        """``HF_DATASETS_CACHE``: prepared Arrow datasets, what ``load_dataset`` reads offline."""
        return self.root / "datasets"

    def environ(self) -> dict[str, str]:
        """Environment variables that point every HF library at this cache, offline."""
        return {
            "HF_HOME": str(self.root),
            "HF_HUB_CACHE": str(self.hub_cache),
            "HF_DATASETS_CACHE": str(self.datasets_cache),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }


# -- model, tokenizer, SAE ---------------------------------------------------------------------------
def gemma_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer shaped like Gemma's: adds BOS, turn markers, the Gemma-2 chat template."""
    backend = word_level(GEMMA_VOCAB, pre_tokenizers.Whitespace())
    bos = GEMMA_VOCAB.index("<bos>")
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    return fast_tokenizer(backend, [_TURN_START, _TURN_END], GEMMA_CHAT_TEMPLATE)


def tiny_gemma2(seed: int = 0, *, layers: int = N_LAYERS) -> Gemma2ForCausalLM:
    """A random Gemma-2 (d_model 32, ``layers`` blocks, 8k positions) over :data:`GEMMA_VOCAB`."""
    pad, bos, eos = (GEMMA_VOCAB.index(t) for t in ("<pad>", "<bos>", "<eos>"))
    return gemma2_decoder(
        seed,
        len(GEMMA_VOCAB),
        layers=layers,
        max_positions=8192,
        sliding_window=4096,  # Gemma2Config's own default (the tests' 16 is for short inputs)
        special_ids=(pad, bos, eos),
    )


def planted_pair(seed: int = 0) -> tuple[Gemma2ForCausalLM, Any]:
    """The tiny Gemma-2 and a JumpReLU SAE (d_in 32, d_sae 64) whose latent 37 fires on forget words only.

    ``plant_forget_direction`` gives forget words a private embedding direction u.
    At the block-3 output forget tokens project 15-20 on u and other tokens at
    most about 4, so the latent fires above 8, with activations of about 1000
    (the most important forget latent). The SAE reads its input without
    subtracting b_dec, as Gemma Scope's do, so both repos load the same function.
    """
    model, sae = plant_forget_direction(tiny_gemma2(seed), random_sae("jumprelu", D_MODEL, D_SAE, seed))
    with torch.no_grad():
        sae.W_enc[:, PLANTED_LATENT] *= 10.0
        sae.b_enc[PLANTED_LATENT] = -8.0 * sae.W_enc[:, PLANTED_LATENT].norm()
    sae.cfg.apply_b_dec_to_input = False
    sae.cfg.metadata.hook_name = f"blocks.{LAYER}.hook_resid_post"
    sae.cfg.metadata.model_name = MODEL_REPO
    return model, sae


def gemma_scope_files(sae: Any) -> dict[str, bytes]:
    """``{SAE_ID}/params.npz`` as Gemma Scope ships it: W_enc, W_dec, b_enc, b_dec, threshold."""
    buffer = io.BytesIO()
    arrays = {k: v.detach().float().numpy() for k, v in sae.state_dict().items()}
    np.savez(buffer, **{k: arrays[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")})
    return {f"{SAE_ID}/params.npz": buffer.getvalue()}


def saelens_files(sae: Any, sae_id: str = SAE_ID) -> dict[str, bytes]:
    """``{sae_id}/cfg.json`` and ``sae_weights.safetensors`` as ``SAE.save_model`` writes them."""
    with tempfile.TemporaryDirectory(prefix="saeguard-sae-") as tmp:
        sae.save_model(tmp)
        return {f"{sae_id}/{name}": data for name, data in folder_files(tmp).items()}


@contextmanager
def tiny_gemma_scope(d_in: int = D_MODEL, d_sae: int = D_SAE) -> Iterator[None]:
    """Within the block, SAELens loads :data:`GEMMA_SCOPE_RELEASE` with ``d_in``/``d_sae`` overridden.

    SAELens reads ``config_overrides`` from its (cached) directory of releases; the
    entry is replaced for the block and restored after. Everything else (repo id,
    ``gemma_2`` converter, hook name, JumpReLU) is SAELens's own.
    """
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    original = directory[GEMMA_SCOPE_RELEASE]
    overrides = {**(original.config_overrides or {}), "d_in": d_in, "d_sae": d_sae}
    directory[GEMMA_SCOPE_RELEASE] = dataclasses.replace(original, config_overrides=overrides)
    try:
        yield
    finally:
        directory[GEMMA_SCOPE_RELEASE] = original


# -- datasets --------------------------------------------------------------------------------------
def mcq_rows(words: Sequence[str], n: int, seed: int, subject: str | None = None) -> list[dict[str, Any]]:
    """``n`` WMDP/MMLU-shaped rows (question, choices (4), answer 0-3[, subject]) made of ``words``."""
    generator = torch.Generator().manual_seed(seed)

    def pick(k: int) -> str:
        return " ".join(words[int(i)] for i in torch.randint(len(words), (k,), generator=generator))

    extra = {"subject": subject} if subject is not None else {}
    return [
        {
            "question": f"what is the {pick(5)} ?",
            "choices": [pick(1 + k % 3) for k in range(4)],
            "answer": i % 4,
        }
        | extra
        for i in range(n)
    ]


LOCAL_TASK = """task: saeguard_local_wmdp
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\n\\
C. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


# -- everything --------------------------------------------------------------------------------------
def build_hub_cache(root: str | Path, *, n_items: int = 8, seed: int = 0) -> HubCache:
    """Write the tiny model, both SAE repos, WMDP/MMLU/wikitext and a local lm-eval task under ``root``.

    ``root`` (``HF_HOME``) must not exist or be empty; it appears whole or not at
    all (:func:`~saeguard.io.staged_folder`). See the module docstring for the
    layout. Takes about a second. WMDP questions and the forget corpus are made of
    forget words; MMLU questions and wikitext of retain words.

    Raises:
        SaeguardError: ``root`` exists and is not empty.
    """
    root = Path(root)
    model, sae = planted_pair(seed)
    retain = corpus(RETAIN_WORDS, 24, 40, seed + 7)
    mmlu_words = RETAIN_WORDS + COMMON_WORDS
    with (
        quiet_progress(),
        staged_folder(root) as stage,
        tempfile.TemporaryDirectory(prefix="saeguard-model-") as tmp,
    ):
        model.save_pretrained(tmp)
        gemma_tokenizer().save_pretrained(tmp)
        write_snapshot(stage / "hub", MODEL_REPO, folder_files(tmp))
        write_snapshot(stage / "hub", GEMMA_SCOPE_REPO, gemma_scope_files(sae))
        write_snapshot(stage / "hub", SAELENS_REPO, saelens_files(sae))
        wmdp = add_dataset(stage, *WMDP, {"test": mcq_rows(FORGET_WORDS + COMMON_WORDS, n_items, seed)})
        mmlu = {
            "test": mcq_rows(mmlu_words, n_items, seed + 1, MMLU[1]),
            "dev": mcq_rows(mmlu_words, 5, seed + 2, MMLU[1]),
        }
        add_dataset(stage, *MMLU, mmlu, class_label=True)
        wikitext = {"train": [{"text": t} for t in ["", *retain]], "test": [{"text": retain[0]}]}
        add_dataset(stage, *WIKITEXT, wikitext)
        forget = corpus(FORGET_WORDS, 24, 40, seed + 3)
        (stage / "bio_forget.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in forget))
        data = root / wmdp.relative_to(stage) / WMDP[1] / "test-00000-of-00001.parquet"
    task_dir = root / "lm_eval_tasks"
    write_text_atomic(task_dir / "saeguard_local_wmdp.yaml", LOCAL_TASK.format(data=data))
    return HubCache(root=root, forget_file=root / "bio_forget.jsonl", task_dir=task_dir)

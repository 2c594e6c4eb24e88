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
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

from saeguard.errors import require
from saeguard.io import staged_folder, write_text_atomic
from saeguard.testing import (
    COMMON_WORDS,
    EVAL_VOCAB,
    FORGET_WORDS,
    PLANTED_LATENT,
    RETAIN_WORDS,
    corpus,
    plant_forget_direction,
    random_sae,
)

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
_LFS_SUFFIXES = (".safetensors", ".npz", ".parquet", ".bin")
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


# -- the hub cache layout ---------------------------------------------------------------------------
def _blob_name(name: str, data: bytes) -> str:
    """The hub's blob name: sha256 for LFS files, git's blob sha1 for the rest."""
    if name.endswith(_LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_snapshot(
    hub_cache: str | Path, repo_id: str, files: Mapping[str, bytes], *, repo_type: str = "model"
) -> Path:
    """Store ``files`` (repo path -> bytes) as the ``main`` revision of ``repo_id``; returns the snapshot.

    Writes ``{repo_type}s--org--name/blobs/<hash>``, ``refs/main`` (a 40-hex commit
    derived from the content) and ``snapshots/<commit>/<path>`` as relative
    symlinks into ``blobs``, as ``huggingface_hub`` does. An existing revision is
    left in place; a new one becomes ``main``.
    """
    require(repo_type in ("model", "dataset"), f"repo_type must be 'model' or 'dataset', got {repo_type!r}")
    repo = Path(hub_cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    blobs = {name: _blob_name(name, data) for name, data in sorted(files.items())}
    commit = hashlib.sha1(json.dumps(blobs, sort_keys=True).encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for name, blob in blobs.items():
        blob_path = repo / "blobs" / blob
        blob_path.parent.mkdir(parents=True, exist_ok=True)
        if not blob_path.exists():
            blob_path.write_bytes(files[name])
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob_path, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def folder_files(folder: str | Path) -> dict[str, bytes]:
    """Every file under ``folder`` keyed by its POSIX path relative to it."""
    base = Path(folder)
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


# -- model, tokenizer, SAE ---------------------------------------------------------------------------
def gemma_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer shaped like Gemma's: adds BOS, turn markers, the Gemma-2 chat template."""
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(GEMMA_VOCAB)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    bos = GEMMA_VOCAB.index("<bos>")
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=[_TURN_START, _TURN_END],
    )
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return tokenizer


def tiny_gemma2(seed: int = 0, *, layers: int = N_LAYERS) -> Gemma2ForCausalLM:
    """A random Gemma-2 (d_model 32, ``layers`` blocks, 8k positions) over :data:`GEMMA_VOCAB`."""
    torch.manual_seed(seed)
    ids = {t: GEMMA_VOCAB.index(t) for t in ("<pad>", "<bos>", "<eos>")}
    config = Gemma2Config(
        vocab_size=len(GEMMA_VOCAB),
        hidden_size=D_MODEL,
        intermediate_size=2 * D_MODEL,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=8192,
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<bos>"],
        eos_token_id=ids["<eos>"],
    )
    return Gemma2ForCausalLM(config).eval()


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


def _parquet(rows: list[dict[str, Any]], class_label: bool) -> bytes:
    import datasets

    features = None
    if class_label:  # cais/mmlu stores the answer as ClassLabel(A-D)
        features = datasets.Features(
            question=datasets.Value("string"),
            subject=datasets.Value("string"),
            choices=datasets.List(datasets.Value("string")),
            answer=datasets.ClassLabel(names=list("ABCD")),
        )
    buffer = io.BytesIO()
    datasets.Dataset.from_list(rows, features=features).to_parquet(buffer)
    return buffer.getvalue()


def add_dataset(
    root: str | Path,
    repo_id: str,
    config: str,
    splits: Mapping[str, list[dict[str, Any]]],
    *,
    class_label: bool = False,
) -> Path:
    """Put one config of ``repo_id`` in the hub cache (README + parquet) and prepare it in the datasets cache.

    The Arrow cache is written by ``datasets``' own parquet builder under the name,
    config and commit an online ``load_dataset(repo_id, config)`` would use, so
    offline loads (which read only that cache) find it. Returns the hub snapshot.
    """
    from datasets.load import LocalDatasetModuleFactory, get_dataset_builder_class

    card = (
        "---\nconfigs:\n"
        f"- config_name: {config}\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: {config}/{s}-*\n" for s in splits)
        + "---\n"
    )
    files = {f"{config}/{s}-00000-of-00001.parquet": _parquet(r, class_label) for s, r in splits.items()}
    snapshot = write_snapshot(
        Path(root) / "hub", repo_id, {"README.md": card.encode(), **files}, repo_type="dataset"
    )
    module = LocalDatasetModuleFactory(str(snapshot)).get_module()
    namespace, name = repo_id.split("/")
    # datasets refuses local data files for a builder that has a repo_id, so prepare
    # under the bare name and move the result to where a hub load keeps it.
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=root) as tmp:
        builder = get_dataset_builder_class(module, dataset_name=name)(
            cache_dir=tmp, dataset_name=name, config_name=config, hash=snapshot.name, base_path=str(snapshot)
        )
        builder.download_and_prepare()
        prepared = Path(builder.cache_dir)
        target = (
            Path(root)
            / "datasets"
            / f"{namespace}___{name}"
            / prepared.relative_to(tmp).parent.relative_to(name)
        )
        target.mkdir(parents=True, exist_ok=True)
        os.replace(prepared, target / prepared.name)
    return snapshot


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
@contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars from transformers or datasets while the cache is written."""
    import datasets
    from transformers.utils import logging as hf_logging

    shown = (hf_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled())
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if shown[0]:
            hf_logging.enable_progress_bar()
        if shown[1]:
            datasets.enable_progress_bars()


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
    with _quiet(), staged_folder(root) as stage, tempfile.TemporaryDirectory(prefix="saeguard-model-") as tmp:
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

"""Writing files where the Hugging Face libraries cache them, so their loaders read them offline.

:func:`write_snapshot` stores a repo revision as ``huggingface_hub`` does
(``blobs/``, ``refs/main``, ``snapshots/<commit>/`` symlinks); :func:`add_dataset`
also prepares a dataset config in the ``datasets`` cache, the only place an
offline ``load_dataset`` reads. ``saeguard.testing_hub`` builds the tiny
stand-ins of the README's GPU recipe with these.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saeguard.errors import require

_LFS_SUFFIXES = (".safetensors", ".npz", ".parquet", ".bin")


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


@contextmanager
def quiet_progress() -> Iterator[None]:
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

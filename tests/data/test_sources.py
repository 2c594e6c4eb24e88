"""Fetching, verifying and extracting offline sources (fake archives; one real fetch)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from saeguard.data import sources
from saeguard.data.sources import Source, fetch_source, source_file, source_status
from saeguard.errors import SaeguardError

PAYLOAD = b'{"A": {"title": "A", "extract": "Alpha text.", "description": "d", "topic": "Arts"}}'


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(path: Path, payload: bytes = PAYLOAD) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pkg/data/file.json", payload)
    return path


def _deb(path: Path, payload: bytes) -> Path:
    """A minimal .deb: an ar archive holding debian-binary and data.tar.xz."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        info = tarfile.TarInfo("./usr/share/thing/file.txt")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    members = [("debian-binary", b"2.0\n"), ("data.tar.xz", buf.getvalue())]
    out = bytearray(b"!<arch>\n")
    for name, body in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n"
        out += header.encode() + body + (b"\n" if len(body) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


@pytest.fixture
def fake_source(tmp_path, monkeypatch):
    """Register a fake PyPI source whose download is a local wheel; returns (source, calls)."""
    monkeypatch.setenv("SAEGUARD_CACHE", str(tmp_path / "cache"))
    archive = _wheel(tmp_path / "fake-1.0-py3-none-any.whl")
    source = Source(
        name="fake",
        kind="pypi",
        package="fake",
        version="1.0",
        archive_sha256=_sha(archive.read_bytes()),
        files={"pkg/data/file.json": ("file.json", _sha(PAYLOAD))},
        licence="test",
    )
    calls: list[int] = []

    def download(src: Source, tmp: Path) -> Path:
        calls.append(1)
        target = tmp / archive.name
        target.write_bytes(archive.read_bytes())
        return target

    monkeypatch.setitem(sources.SOURCES, "fake", source)
    monkeypatch.setattr(sources, "_download", download)
    sources._HASHES.clear()
    return source, calls


def test_fetch_extracts_verifies_and_skips_second_time(fake_source):
    _, calls = fake_source
    folder = fetch_source("fake")
    assert (folder / "file.json").read_bytes() == PAYLOAD
    assert (folder / sources.MANIFEST).is_file()
    assert fetch_source("fake") == folder
    assert len(calls) == 1  # verified copy is reused
    assert source_file("fake", "file.json") == folder / "file.json"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_source_file_fetches_missing_source(fake_source):
    _, calls = fake_source
    assert source_file("fake", "file.json").read_bytes() == PAYLOAD
    assert len(calls) == 1


def test_archive_checksum_mismatch_is_one_line_error(fake_source, monkeypatch):
    source, _ = fake_source
    bad = Source(**{**source.__dict__, "archive_sha256": "0" * 64})
    monkeypatch.setitem(sources.SOURCES, "fake", bad)
    with pytest.raises(SaeguardError) as err:
        fetch_source("fake")
    msg = str(err.value)
    assert "\n" not in msg
    assert "'fake'" in msg and "sha256" in msg and "saeguard data fetch" in msg


def test_corrupt_extracted_file_is_one_line_error_and_refetch_repairs(fake_source):
    folder = fetch_source("fake")
    (folder / "file.json").write_bytes(b"tampered")
    with pytest.raises(SaeguardError) as err:
        source_file("fake", "file.json")
    msg = str(err.value)
    assert "\n" not in msg and "'fake'" in msg and "corrupt" in msg
    assert "saeguard data fetch" in msg
    assert source_status()["fake"].startswith("has a corrupt")
    fetch_source("fake")  # what `saeguard data fetch` runs: replaces the bad copy
    assert (folder / "file.json").read_bytes() == PAYLOAD


def test_download_failure_names_source_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEGUARD_CACHE", str(tmp_path))

    def fail(cmd, cwd):
        return sources.subprocess.CompletedProcess(cmd, 1, "", "ERROR: network unreachable")

    monkeypatch.setattr(sources, "_run", fail)
    with pytest.raises(SaeguardError) as err:
        fetch_source("wiki")
    msg = str(err.value)
    assert "\n" not in msg and "'wiki'" in msg and "network unreachable" in msg
    assert "saeguard data fetch" in msg


def test_missing_apt_get_explains(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEGUARD_CACHE", str(tmp_path))
    monkeypatch.setattr(sources.shutil, "which", lambda _: None)
    with pytest.raises(SaeguardError, match="apt-get is missing"):
        fetch_source("wordnet")


def test_unknown_source():
    with pytest.raises(SaeguardError, match="unknown data source"):
        fetch_source("nope")


def test_deb_extraction_without_dpkg(tmp_path):
    payload = b"gloss text\n"
    deb = _deb(tmp_path / "thing_1.0_all.deb", payload)
    source = Source(
        name="thing",
        kind="apt",
        package="thing",
        version="1.0",
        archive_sha256=_sha(deb.read_bytes()),
        files={"usr/share/thing/file.txt": ("file.txt", _sha(payload))},
        licence="test",
    )
    dest = tmp_path / "out" / "thing"
    sources._install(source, deb, dest)
    assert (dest / "file.txt").read_bytes() == payload


@pytest.mark.integration
def test_real_sources_fetch_and_verify():
    paths = sources.fetch_all(progress=False)
    assert set(paths) == {"wiki", "cwe", "wordnet", "austen"}
    assert set(source_status().values()) == {"ok"}
    assert source_file("cwe", "cwe-tou.LICENSE").is_file()  # MITRE terms travel with the data
